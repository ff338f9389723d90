"""`hsmkm db upgrade` on the first release's home (tests/fixtures/v1-home.tar.gz, schema v1
with users, a revocation, a CRL and a completed recovery): afterwards the home passes
`audit verify`, enrolls a user, publishes a CRL and completes a recovery. Until it is
upgraded, every other command refuses in one line that names `hsmkm db upgrade`."""

from __future__ import annotations

import sqlite3
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import hsmkm
from hsmkm.keys.epf import EpfKeystore
from hsmkm.x509.crlparse import parse_crl

FIXTURE = Path(__file__).parent / "fixtures" / "v1-home.tar.gz"


@pytest.fixture
def v1(tmp_path: Path) -> tuple[Path, Path]:
    """(the first release's KM home, its users' keystores), extracted where the test runs."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "km", tmp_path / "users"


def _dump(home: Path) -> list[str]:
    with sqlite3.connect(home / "km.db") as conn:
        return list(conn.iterdump())


def _encryption_keys(path: Path, password: str) -> set[int]:
    """The private values of a keystore's (or an export's) encryption keys."""
    keys = set()
    for entry in EpfKeystore.open(path, password).encryption_entries():
        key = entry.key
        keys.add(key.private_numbers().d if isinstance(key, rsa.RSAPrivateKey) else key.private_numbers().private_value)
    return keys


def _approve(home: Path, request_id: int) -> None:
    # The first release's officers never attested an officer set: they approve once trusting
    # the keys' fingerprints (officer2 did not take part in the first release's recovery).
    for officer in ("officer2", "officer3"):
        hsmkm("recovery", "approve", str(request_id), "--officer", officer, "--yes", "--trust-officer-set", home=home)


def test_an_un_upgraded_database_refuses_other_commands_in_one_line(v1: tuple[Path, Path]) -> None:
    home, _ = v1
    before = _dump(home)
    for args in (
        ["status"],
        ["audit", "verify"],
        ["user", "add", "dave@example.com"],
        ["crl", "publish"],
        ["recovery", "request", "bob@example.com", "--reason", "x"],
    ):
        run = hsmkm(*args, home=home, check=False)
        assert run.returncode == 2, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hsmkm: error: ") and "hsmkm db upgrade" in lines[0], (
            args,
            lines,
        )
        assert "Traceback" not in run.stderr and run.stdout == ""
    assert _dump(home) == before


@pytest.mark.slow
def test_the_first_release_home_upgraded_verifies_enrolls_publishes_and_recovers(
    v1: tuple[Path, Path], tmp_path: Path
) -> None:
    home, users = v1
    up = hsmkm("db", "upgrade", "--json", home=home).json()
    assert up["upgraded"] is True and up["from"] != up["to"]
    assert hsmkm("db", "upgrade", "--json", home=home).json() == {"from": up["to"], "to": up["to"], "upgraded": False}
    status = hsmkm("status", home=home).stdout
    assert up["to"] in status
    assert hsmkm("status", "--json", home=home).json()["counts"]["users"] == 3

    # the first release's log, chained and MAC'd then, verifies now
    verified = hsmkm("audit", "verify", "--json", home=home).json()
    assert verified["ok"] is True and verified["entries"] > 0

    # a new user enrolls
    code = hsmkm("user", "add", "dave@example.com", "--json", home=home).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "dave@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(tmp_path / "dave.epf"),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": "dave-pw-1"},
    )
    assert len(_encryption_keys(tmp_path / "dave.epf", "dave-pw-1")) == 1

    # a CRL numbered after the first release's, still listing carol's revocation
    first = parse_crl((home / "pub" / "crl" / "full.crl").read_bytes())
    assert first.number is not None
    published = hsmkm("crl", "publish", "--json", home=home).json()
    assert published["number"] == first.number + 1
    crl = parse_crl((home / "pub" / "crl" / "full.crl").read_bytes())
    assert crl.number == first.number + 1
    assert {e.serial for e in first.entries()} <= {e.serial for e in crl.entries()} and len(list(first.entries())) > 0

    # a recovery: the archive migrates to per-record shares first, then bob's keys come back
    mid = hsmkm("archive", "migrate", "--json", home=home).json()["id"]
    _approve(home, mid)
    hsmkm("archive", "migrate", "--request", str(mid), home=home)
    rid = hsmkm("recovery", "request", "bob@example.com", "--reason", "after the upgrade", "--json", home=home).json()[
        "id"
    ]
    _approve(home, rid)
    out = tmp_path / "bob.p12"
    hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        home=home,
        env={"OUT": "recovered-pw"},
    )
    assert _encryption_keys(out, "recovered-pw") == _encryption_keys(users / "bob.epf", "fixture-bob")
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True
