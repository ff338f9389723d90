"""A KM home is relocatable: copied to another path with the original deleted, the copy
runs `status`, a new user's enrollment, `crl publish` and a whole recovery on its own files,
and nothing in it (km.json, the token store's config, the database, any file) names the
path it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import all_bytes_under, hsmkm
from hsmkm.keys.epf import EpfKeystore

PW = "relocated-pw-1"


def _enroll(home: Path, email: str, keystore: Path) -> None:
    code = hsmkm("user", "add", email, "--json", home=home).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(keystore),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )


def _encryption_keys(path: Path, password: str) -> set[int]:
    keys = set()
    for entry in EpfKeystore.open(path, password).encryption_entries():
        key = entry.key
        keys.add(key.private_numbers().d if isinstance(key, rsa.RSAPrivateKey) else key.private_numbers().private_value)
    return keys


def _naming(root: Path, path: Path) -> list[str]:
    """The files under ``root`` whose bytes hold ``path`` (as text, absolute or resolved)."""
    needles = {str(path).encode(), str(path.resolve()).encode()}
    return sorted(str(p.relative_to(root)) for p, data in all_bytes_under(root) if any(n in data for n in needles))


@pytest.mark.slow
def test_a_copied_home_works_on_its_own_with_the_original_deleted(tmp_path: Path) -> None:
    original = tmp_path / "original" / "km"
    users = tmp_path / "users"
    users.mkdir()
    hsmkm("init", "--ca-subject", "CN=Relocated KM CA,O=hsmkm tests", "--ca-key", "p256", home=original)
    _enroll(original, "alice@example.com", users / "alice.epf")
    hsmkm("crl", "publish", home=original)

    copy = tmp_path / "elsewhere" / "km"
    shutil.copytree(original, copy, symlinks=True)
    shutil.rmtree(tmp_path / "original")
    assert str(original) not in (copy / "km.json").read_text()

    status = hsmkm("status", "--json", home=copy).json()
    assert status["counts"]["users"] == 1

    _enroll(copy, "bob@example.com", users / "bob.epf")
    assert len(_encryption_keys(users / "bob.epf", PW)) == 1

    published = hsmkm("crl", "publish", "--json", home=copy).json()
    assert published["number"] == 2 and (copy / "pub" / "crl" / "full.crl").is_file()

    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "relocated", "--json", home=copy).json()["id"]
    for officer in ("officer1", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=copy)
    out = tmp_path / "alice-recovered.p12"
    hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        home=copy,
        env={"OUT": "recovered-pw"},
    )
    assert _encryption_keys(out, "recovered-pw") == _encryption_keys(users / "alice.epf", PW)
    assert hsmkm("audit", "verify", "--json", home=copy).json()["ok"] is True

    assert not (tmp_path / "original").exists(), "the copy re-made something at the original's path"
    assert _naming(copy, original) == []
