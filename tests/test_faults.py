"""The kill -9 fault campaign's bounded smoke: a few injections into status, enroll and
archive rotate, each followed by every invariant check (the full run is scripts/faults)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by scripts/setup")
def test_kill_minus_9_smoke_keeps_every_invariant() -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "faults"), "--smoke", "--json"], capture_output=True, text=True, timeout=300
    )
    report = json.loads(proc.stdout)
    assert report["failures"] == [], report["failures"]
    total = next(r for r in report["table"] if r["command"] == "total")
    assert total["injections"] >= 6
    for invariant in ("tokens", "rerun", "audit", "secrets", "temps"):
        assert total[invariant] == 0
    # The injections include writes that SoftHSM2 makes after truncating a token file: the
    # kills that used to lose a token, here restored from the store's copy.
    assert total["restored"] >= 1
    assert proc.returncode == 0
