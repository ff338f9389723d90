"""One token interface: tokens opened from RFC 7512 URIs, the SoftHSM2 store handed to the module
(never left in the environment), backends loaded only when used, km.json naming tokens by URI."""

from __future__ import annotations

import ast
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MakeToken, hsmkm, softhsm_conf, trial_pin
from hsmkm import errors, keys
from hsmkm.keys.token import ObjectKind
from hsmkm.km.config import CONFIG_VERSION, Home, KmConfig, TokenRef

SRC = Path(__file__).resolve().parent.parent / "src" / "hsmkm"
_LIBC = ctypes.CDLL(None)
_LIBC.getenv.restype = ctypes.c_char_p
_LIBC.getenv.argtypes = [ctypes.c_char_p]


def _c_env(name: str) -> bytes | None:
    """The variable as the C library (and so SoftHSM2, and every child process) sees it."""
    value: bytes | None = _LIBC.getenv(name.encode())
    return value


def test_a_store_is_handed_to_the_module_and_never_left_in_the_environment(
    user_token: MakeToken, module_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    conf = user_token("env-a", "env-a-pin-1")
    ts = keys.open_token(f"pkcs11:token=env-a?module-path={module_path}", "env-a-pin-1", softhsm_config=str(conf))
    ts.generate_aes_key("k")
    assert ts.has_object("k", ObjectKind.SECRET_KEY)
    assert "SOFTHSM2_CONF" not in os.environ and _c_env("SOFTHSM2_CONF") is None
    # A caller's own setting is left as it was.
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent/callers-own.conf")
    other = user_token("env-b", "env-b-pin-1", store=keys.token_provisioner().make_store(conf.parent.parent / "b"))
    keys.open_token(f"pkcs11:token=env-b?module-path={module_path}", "env-b-pin-1", softhsm_config=str(other))
    assert os.environ["SOFTHSM2_CONF"] == "/nonexistent/callers-own.conf"
    assert _c_env("SOFTHSM2_CONF") == b"/nonexistent/callers-own.conf"


def test_one_process_reaches_two_stores_each_with_its_own_tokens(
    user_token: MakeToken, tmp_path: Path, module_path: str
) -> None:
    """The module is re-initialised for the other store: each store shows its own tokens only,
    and going back re-reads the first (with the config handed over again, not the environment's)."""
    prov = keys.token_provisioner()
    a = user_token("in-a", "in-a-pin-1", store=prov.make_store(tmp_path / "a"))
    b = user_token("in-b", "in-b-pin-1", store=prov.make_store(tmp_path / "b"))
    assert keys.load_module(module_path, str(a)).token_labels().count("in-a") == 1
    assert "in-b" not in keys.load_module(module_path, str(a)).token_labels()
    on_b = keys.open_token(f"pkcs11:token=in-b?module-path={module_path}", "in-b-pin-1", softhsm_config=str(b))
    assert on_b.label == "in-b" and "in-a" not in keys.load_module(module_path, str(b)).token_labels()
    with pytest.raises(errors.TokenNotFound):
        keys.open_token(f"pkcs11:token=in-a?module-path={module_path}", "in-a-pin-1", softhsm_config=str(b))
    back = keys.open_token(f"pkcs11:token=in-a?module-path={module_path}", "in-a-pin-1", softhsm_config=str(a))
    assert back.label == "in-a"
    with pytest.raises(errors.TokenError):
        on_b.random(8)  # its session ended with the re-initialisation; it reaches no other token


def test_a_token_uri_without_a_module_is_bad_input() -> None:
    with pytest.raises(errors.BadInput):
        keys.open_token("pkcs11:token=x", "1234")


def test_importing_cms_x509_and_km_loads_no_pkcs11_backend() -> None:
    code = (
        "import sys, hsmkm.cms, hsmkm.x509, hsmkm.keys, hsmkm.km.manager, hsmkm.cli.main; "
        "print(sorted(m for m in sys.modules if m == 'pkcs11' or m.startswith(('pkcs11.', 'hsmkm.keys.pkcs11'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("layer", ["km", "cli", "client", "cms"])
def test_upper_layers_import_no_token_backend(layer: str) -> None:
    found = []
    for path in (SRC / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name == "pkcs11" or name.startswith(("pkcs11.", "hsmkm.keys.pkcs11", "hsmkm.keys.softhsm")):
                    found.append(f"{path.relative_to(SRC)}: {name}")
    assert found == []


def test_km_json_names_tokens_by_uri_and_reads_the_older_fields(km_home: Path, tmp_path: Path) -> None:
    data = json.loads((km_home / "km.json").read_text())
    assert data["version"] == CONFIG_VERSION == 3
    assert data["km_token"].startswith("pkcs11:token=hsmkm") and "module-path=" in data["km_token"]
    assert str(km_home.absolute()) not in (km_home / "km.json").read_text()
    ref = TokenRef.parse(data["km_token"])
    assert ref.label == "hsmkm" and ref.serial is None and Path(ref.module).is_file()
    # The same home as version 2 wrote it: module/label/serial fields.
    old = tmp_path / "v2"
    old.mkdir()
    v2 = {**data, "version": 2, "km_token": {"module": ref.module, "label": "hsmkm", "serial": None}}
    (old / "km.json").write_text(json.dumps(v2))
    loaded = KmConfig.load(Home(old))
    assert loaded.km_token == ref and loaded.recovery_token is None
    loaded.save(Home(old))
    assert json.loads((old / "km.json").read_text())["km_token"] == data["km_token"]


def test_a_token_uri_in_km_json_round_trips_odd_labels_and_serials() -> None:
    ref = TokenRef("/usr/lib/softhsm/libsofthsm2.so", "KM token; 1/2 ?&=%", "0a1b2c")
    assert TokenRef.parse(ref.uri.to_uri()) == ref
    with pytest.raises(ValueError):
        TokenRef.parse("pkcs11:token=x")  # no module
    with pytest.raises(TypeError):
        TokenRef.parse(5)


def test_a_km_opened_in_process_uses_its_homes_store(km_home: Path) -> None:
    st = hsmkm("status", "--json", home=km_home).json()
    from hsmkm.km.manager import KeyManager
    from hsmkm.km.publishers import publisher_for

    km = KeyManager.open(km_home, trial_pin(km_home, "km"), publisher=publisher_for(km_home))
    try:
        assert km.session.serial == st["token"]["serial"] and km.session.module.store is not None
        assert "SOFTHSM2_CONF" not in os.environ or os.environ["SOFTHSM2_CONF"] != str(softhsm_conf(km_home))
    finally:
        km.close()
