"""python -m hsmkm.bench [--json] [--quick] [GROUP …]"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

from hsmkm.bench.rows import Row, format_table

GROUPS = ("issuance", "enroll", "crl", "cms", "recovery", "serve", "ldap")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=" ".join(GROUPS))
    args = parser.parse_args()
    groups = args.groups or list(GROUPS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hsmkm-bench-") as tmp:
        for group in groups:
            try:
                mod = importlib.import_module(f"hsmkm.bench.{group}")
            except ModuleNotFoundError as exc:
                print(f"bench: group {group} not available ({exc})", file=sys.stderr)
                continue
            print(f"bench: {group} …", file=sys.stderr)
            group_rows = mod.run(Path(tmp), args.quick)
            rows += group_rows
            if not args.json:
                print(format_table(group_rows), flush=True)
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
