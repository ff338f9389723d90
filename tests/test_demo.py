"""scripts/demo: the lifecycle with every user command over the network runs to its end, each
step's expected outcome checked by the script itself, and leaves no server running."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.interop
def test_demo_runs_the_networked_lifecycle_and_stops_its_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"HSMKM_HOME", "HSMKM_PROFILE", "SOFTHSM2_CONF"}}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo")], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "every user command over the network" in out.splitlines()[-1]
    # What the users read: bob on his token, alice after her recovery (online and offline),
    # carol with the server stopped.
    assert "Hi Bob and Carol, this is Alice." in out
    assert "Alice, the plan is in the usual place." in out
    assert "alice still reads carol's older message offline" in out
    assert "Written with the KM down." in out
    # The revocation's effects, each a refusal the script checked for its exit code.
    assert out.count("as expected)") == 3
    # The trap stopped the server and removed the demo's directory.
    serving = re.search(r"hsmkm: serving https://127\.0\.0\.1:(\d+)", out)
    assert serving is not None
    port = int(serving.group(1))
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    assert list(tmp_path.iterdir()) == []
