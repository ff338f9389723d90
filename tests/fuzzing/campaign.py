"""Runs the fuzz targets (``scripts/fuzz``): one process per target, a few at a time, and a
table of executions and crashes at the end."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

ALL = ["ber", "signed", "enveloped", "smime", "pkcs12", "crl", "csr", "uri", "csv", "address"]
# Per-input limit: a valid .epf may ask for 10,000,000 MAC iterations, which take seconds.
TIMEOUT_S = {"pkcs12": 60}


class TargetResult(TypedDict):
    """One target's run, as the table and report.json show it."""

    target: str
    seconds: int
    executions: int
    crashed: bool
    returncode: int
    artifacts: list[str]
    log: str


def run_target(name: str, seconds: int, work: Path, nice: bool) -> TargetResult:
    corpus = work / "corpus" / name
    crashes = work / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(HERE / "run.py"),
        name,
        str(corpus),
        f"-max_total_time={seconds}",
        f"-timeout={TIMEOUT_S.get(name, 10)}",
        "-rss_limit_mb=1024",
        "-max_len=65536",
        f"-artifact_prefix={crashes}/{name}-",
        "-print_final_stats=1",
    ]
    if nice:
        argv = ["nice", "-n", "19", *argv]
    started = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    text = log.read_text(errors="replace")
    m = re.findall(r"Done (\d+) runs", text) or re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    runs = int(m[-1]) if m else 0
    crashed = proc.returncode != 0
    artifacts = sorted(str(p) for p in crashes.glob(f"{name}-*"))
    return TargetResult(
        target=name,
        seconds=round(time.monotonic() - started),
        executions=runs,
        crashed=crashed,
        returncode=proc.returncode,
        artifacts=artifacts if crashed else [],
        log=str(log),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("targets", nargs="*", default=ALL, help=f"targets (default all: {' '.join(ALL)})")
    ap.add_argument("--smoke", action="store_true", help="every target for a few seconds")
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    ap.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once")
    ap.add_argument("--work", type=Path, default=ROOT / ".fuzz", help="corpora, crash inputs, logs")
    ap.add_argument("--no-nice", action="store_true", help="do not run at nice 19")
    args = ap.parse_args()
    unknown = set(args.targets) - set(ALL)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    seconds = 4 if args.smoke else args.seconds
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: run_target(t, seconds, args.work, not args.no_nice), args.targets))
    total = sum(r["executions"] for r in results)
    print(f"{'target':<10} {'seconds':>8} {'executions':>12}  result")
    for r in results:
        print(
            f"{r['target']:<10} {r['seconds']:>8} {r['executions']:>12}  "
            + ("CRASH " + " ".join(r["artifacts"]) + f" (see {r['log']})" if r["crashed"] else "ok")
        )
    print(f"{'total':<10} {sum(r['seconds'] for r in results):>8} {total:>12}")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "report.json").write_text(json.dumps({"results": results, "total_executions": total}, indent=1))
    return 1 if any(r["crashed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
