"""What the LDAP tests share: a KM publishing into the session's slapd, read back with
``ldapsearch`` as a mail client would."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from conftest import hsmkm
from hsmkm.bench.slapd import Slapd

PW = "keystore-pass-1"


def configure(home: Path, slapd: Slapd, base: str) -> None:
    hsmkm(
        "directory",
        "ldap",
        "--url",
        slapd.url,
        "--base-dn",
        base,
        "--bind-dn",
        slapd.root_dn,
        "--password-source",
        f"file:{slapd.password_file}",
        home=home,
    )


def enroll(home: Path, email: str, epf: Path) -> None:
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
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )


def values(ldif: str, attr: str) -> list[bytes]:
    """The base64 (``attr:: ``) values of ``attr`` in unwrapped LDIF."""
    prefix = f"{attr}:: "
    return [base64.b64decode(line[len(prefix) :]) for line in ldif.splitlines() if line.startswith(prefix)]


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=False)
