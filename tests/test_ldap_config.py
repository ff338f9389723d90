"""Configuring the LDAP publisher: StartTLS against the operator's CA (a directory whose
certificate another CA issued is refused), a bind password only over TLS off loopback, the
password kept as a source reference (never in km.json, argv or messages), ``directory sync
--full`` rewriting every entry after a directory restore."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import hsmkm
from hsmkm import errors
from hsmkm.bench.slapd import Slapd
from ldap_helpers import configure, enroll, values

pytestmark = pytest.mark.interop


def _init(home: Path) -> None:
    hsmkm("init", "--ca-subject", "CN=LDAP CA", "--ca-key", "p256", home=home)


def _ldap_args(slapd: Slapd, base: str, password_file: Path, *extra: str) -> list[str]:
    return [
        "directory", "ldap", "--url", slapd.url, "--base-dn", base, "--bind-dn", slapd.root_dn,
        "--password-source", f"file:{password_file}", *extra,
    ]  # fmt: skip


def test_starttls_against_the_operators_ca_and_a_directory_of_another_ca_refused(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    home = tmp_path / "km"
    _init(home)
    before = (home / "km.json").read_bytes()
    wrong = hsmkm(
        *_ldap_args(slapd, ldap_base, slapd.password_file, "--ca-cert", str(home / "pub" / "ca.crt")),
        home=home,
        check=False,
    )
    assert wrong.returncode == errors.ExitCode.UNREACHABLE and "TLS" in wrong.stderr, wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and (home / "km.json").read_bytes() == before

    hsmkm(*_ldap_args(slapd, ldap_base, slapd.password_file, "--ca-cert", str(slapd.tls_ca)), home=home)
    saved = json.loads((home / "km.json").read_text())["ldap"]
    assert saved["ca_cert"] == str(slapd.tls_ca) and saved["password_source"] == f"file:{slapd.password_file}"
    ca_entry = slapd.search(ldap_base, "(objectClass=pkiCA)", "cACertificate;binary")
    assert values(ca_entry, "cACertificate;binary") == [(home / "pub" / "ca.crt").read_bytes()]


def test_the_password_stays_in_its_source(tmp_path: Path, slapd: Slapd, ldap_base: str) -> None:
    home = tmp_path / "km"
    _init(home)
    remote = hsmkm(
        "directory", "ldap", "--url", "ldap://ldap.example.com", "--base-dn", ldap_base, "--bind-dn", slapd.root_dn,
        "--password-source", f"file:{slapd.password_file}", home=home, check=False,
    )  # fmt: skip
    assert remote.returncode == errors.ExitCode.BAD_INPUT and "only over TLS" in remote.stderr

    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-password-4711")
    refused = hsmkm(*_ldap_args(slapd, ldap_base, bad), home=home, check=False)
    assert refused.returncode == errors.ExitCode.BAD_INPUT and "refused" in refused.stderr
    assert "not-the-password-4711" not in refused.stderr + refused.stdout

    configure(home, slapd, ldap_base)
    for path in home.rglob("*"):
        if path.is_file():
            assert slapd.password.encode() not in path.read_bytes(), path


def test_sync_full_rewrites_the_directory_after_a_restore(tmp_path: Path, slapd: Slapd, ldap_base: str) -> None:
    home = tmp_path / "km"
    _init(home)
    configure(home, slapd, ldap_base)
    enroll(home, "alice@example.com", tmp_path / "alice.epf")
    hsmkm("crl", "publish", home=home)
    # A restore from an old backup: alice's entry lost, the CA entry lost, a stale user back.
    subprocess_args = ["ldapdelete", "-x", "-H", slapd.url, "-D", slapd.root_dn, "-y", str(slapd.password_file)]
    subprocess.run([*subprocess_args, f"mail=alice@example.com,{ldap_base}", f"cn=hsmkm-ca,{ldap_base}"], check=True)
    slapd.ldif(
        f"dn: mail=gone@example.com,{ldap_base}\nobjectClass: inetOrgPerson\nobjectClass: pkiUser\n"
        f"cn: gone\nsn: gone\nmail: gone@example.com\n"
    )
    hsmkm("directory", "sync", "--full", home=home)
    alice = slapd.search(ldap_base, "(mail=alice@example.com)", "userCertificate;binary")
    assert sorted(values(alice, "userCertificate;binary")) == sorted(
        (home / "pub" / "certs" / f"alice@example.com.{k}.crt").read_bytes() for k in ("enc", "sign")
    )
    assert slapd.search(ldap_base, "(mail=gone@example.com)", "mail") == ""
    ca_entry = slapd.search(ldap_base, "(objectClass=pkiCA)", "certificateRevocationList;binary")
    assert values(ca_entry, "certificateRevocationList;binary") == [(home / "pub" / "crl" / "full.crl").read_bytes()]


def test_a_refused_bind_keeps_the_rows_queued_until_the_password_source_is_fixed(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    home = tmp_path / "km"
    _init(home)
    password = tmp_path / "ldap.pw"
    password.write_text(slapd.password)
    hsmkm(*_ldap_args(slapd, ldap_base, password), home=home)
    password.write_text("changed-on-the-server-side")
    enroll(home, "alice@example.com", tmp_path / "alice.epf")  # the enrollment itself goes through
    outbox = hsmkm("status", "--json", home=home).json()["outbox"]
    assert outbox["depth"] == 1 and "refused" in outbox["last_error"]
    assert "changed-on-the-server-side" not in outbox["last_error"]
    assert slapd.search(ldap_base, "(mail=alice@example.com)", "mail") == ""
    password.write_text(slapd.password)
    hsmkm("directory", "sync", home=home)
    assert hsmkm("status", "--json", home=home).json()["outbox"]["depth"] == 0
    assert (
        len(
            values(
                slapd.search(ldap_base, "(mail=alice@example.com)", "userCertificate;binary"), "userCertificate;binary"
            )
        )
        == 2
    )
