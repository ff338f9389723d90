"""A user's token session and the KM's in one process: the user's certificates and keys land on
the user's token and never on the KM token, even when the two are reached through differently
spelled or different SoftHSM2 configurations (a module re-initialised reuses session handles)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import HSMKM, softhsm_env, trial_pin

PW = "correct-horse-battery"
_INIT_TOKEN = (
    "import sys; from hsmkm.keys.pkcs11 import Pkcs11Module; from hsmkm.keys.softhsm import find_softhsm_module, "
    "init_token; init_token(Pkcs11Module.load(find_softhsm_module()), sys.argv[1], 'so-' + sys.argv[2], sys.argv[2])"
)
_LABELS = (
    "import sys; from pkcs11 import Attribute; from hsmkm.keys.pkcs11 import Pkcs11Module; "
    "from hsmkm.keys.softhsm import find_softhsm_module; "
    "s = Pkcs11Module.load(find_softhsm_module()).open_token(sys.argv[2], label=sys.argv[1]); "
    "print('\\n'.join(sorted(str(o[Attribute.LABEL]) for o in s.session.get_objects())))"
)


def _run(argv: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HSMKM_")}
    proc = subprocess.run(argv, cwd=cwd, env={**full, **env}, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _labels(cwd: Path, env: dict[str, str], token: str, pin: str) -> list[str]:
    return _run([sys.executable, "-c", _LABELS, token, pin], cwd, env).stdout.split()


def test_enrolling_a_token_beside_a_km_home_given_by_a_relative_path(tmp_path: Path, module_path: str) -> None:
    """The KM's home named relatively (its SoftHSM2 configuration too), the user's token
    reached through the same configuration named absolutely: one store, one session each."""
    _run([HSMKM, "--home", "km", "init", "--ca-subject", "CN=Sessions CA", "--ca-key", "p256"], tmp_path, {})
    env = softhsm_env(tmp_path / "km")  # absolute
    _run([sys.executable, "-c", _INIT_TOKEN, "ulla", "ulla-pin-1234"], tmp_path, env)
    code = _run([HSMKM, "--home", "km", "--json", "user", "add", "ulla@example.com"], tmp_path, {}).stdout
    import json

    uri = f"pkcs11:token=ulla?module-path={module_path}&pin-source=env:ULLA_PIN"
    _run(
        [HSMKM, "enroll", "--km", "km", "--email", "ulla@example.com", "--code-source", "env:CODE", "--keystore", uri],
        tmp_path,
        {"CODE": json.loads(code)["code"], "ULLA_PIN": "ulla-pin-1234", **env},
    )
    user_objects = _labels(tmp_path, env, "ulla", "ulla-pin-1234")
    assert any(label.startswith("ulla-enc-") for label in user_objects) and "ulla-sign" in user_objects
    km_pin = trial_pin(tmp_path / "km", "km")
    km_objects = _labels(tmp_path, env, "hsmkm", km_pin)
    assert not any(label.startswith("ulla") or label == "hsmkm CA" for label in km_objects), km_objects


def test_a_session_whose_module_was_reinitialised_is_refused_not_redirected(tmp_path: Path, module_path: str) -> None:
    """Two SoftHSM2 stores in one process: loading the module for the second ends the first's
    sessions; using one then fails, instead of reaching whichever token now has its handle."""
    script = f"""
import sys
from pkcs11 import Attribute, ObjectClass
from hsmkm import errors
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.keys.softhsm import init_token, write_store_config
from pathlib import Path
root = Path(sys.argv[1])
conf_a = str(write_store_config(root / "a"))
conf_b = str(write_store_config(root / "b"))
init_token(Pkcs11Module.load({module_path!r}, conf_a), "alpha", "so-alpha-1", "alpha-pin-1")
user = Pkcs11Module.load({module_path!r}, conf_a).open_token("alpha-pin-1", label="alpha")
init_token(Pkcs11Module.load({module_path!r}, conf_b), "beta", "so-beta-1", "beta-pin-1")
other = Pkcs11Module.load({module_path!r}, conf_b).open_token("beta-pin-1", label="beta")
try:
    user.store_certificate(b"\\x30\\x00", "stray", b"\\x01", b"\\x30\\x00")
    print("WROTE")
except errors.TokenError as exc:
    print("REFUSED", exc)
print("BETA", sorted(str(o[Attribute.LABEL]) for o in other.session.get_objects()))
"""
    out = _run([sys.executable, "-c", script, str(tmp_path)], tmp_path, {}).stdout
    assert "REFUSED" in out and "module was re-initialised" in out, out
    assert "stray" not in out.split("BETA", 1)[1], out
