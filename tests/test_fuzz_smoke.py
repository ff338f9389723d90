"""A bounded smoke of the fuzz campaign (``scripts/fuzz --smoke``): every parser target runs
for a few seconds, coverage-guided where atheris is installed, and none may crash."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_fuzz_smoke_runs_every_target_without_a_crash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "fuzz"), "--smoke", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    results = {r["target"]: r for r in report["results"]}
    assert set(results) == {"ber", "signed", "enveloped", "smime", "pkcs12", "crl", "csr", "uri", "csv", "address"}
    for name, r in results.items():
        assert not r["crashed"] and r["executions"] > 100, (name, r)
