"""Looking recipients up in LDAP: ``msg encrypt --directory ldap://…`` finds a user known only
from the directory (``(mail=ADDR)``, as Thunderbird searches) and encrypts to them; what the
directory holds is not trusted: a certificate planted there by someone else (another CA's, or
one the KM revoked) is refused with one clear line."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import hsmkm
from hsmkm import errors
from hsmkm.bench.slapd import Slapd
from ldap_helpers import PW, configure, enroll, values

pytestmark = pytest.mark.interop


def _plant(slapd: Slapd, base: str, email: str, der: bytes) -> None:
    """An entry written by someone with write access to the directory, not by the KM."""
    slapd.ldif(
        f"dn: mail={email},{base}\nobjectClass: inetOrgPerson\nobjectClass: pkiUser\ncn: {email}\n"
        f"sn: planted\nmail: {email}\nuserCertificate;binary:: {base64.b64encode(der).decode()}\n"
    )


def _foreign_certificate(email: str) -> bytes:
    """A certificate for ``email`` from another CA, otherwise as the KM would make it."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LDAP CA")])  # the same name, another key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_encrypt_to_a_user_known_only_from_ldap_and_refuse_planted_certificates(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=LDAP CA", "--ca-key", "p256", home=home)
    configure(home, slapd, ldap_base)
    enroll(home, "bob@example.com", tmp_path / "bob.epf")
    enroll(home, "dave@example.com", tmp_path / "dave.epf")
    (dave_enc,) = [
        d
        for d in values(
            slapd.search(ldap_base, "(mail=dave@example.com)", "userCertificate;binary"), "userCertificate;binary"
        )
        if d == (home / "pub" / "certs" / "dave@example.com.enc.crt").read_bytes()
    ]
    hsmkm("user", "revoke", "dave@example.com", "--reason", "keyCompromise", home=home)
    hsmkm("crl", "publish", home=home)
    ca = x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes())
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    # The client: a profile holding only the CA certificate; recipients and CRLs from LDAP.
    profile = tmp_path / "profile"
    directory = f"{slapd.url}/{ldap_base}"
    note = tmp_path / "note.eml"
    note.write_bytes(b"Subject: hello\r\n\r\nfrom the directory\r\n")
    common = ("msg", "encrypt", "--profile", str(profile), "--directory", directory)
    hsmkm(*common, "--ca-cert", str(ca_pem), "--to", "bob@example.com", str(note), "-o", str(tmp_path / "s.eml"))
    opened = hsmkm(
        "msg", "decrypt", "--keystore", str(tmp_path / "bob.epf"), "--password-source", "env:PW", "--km", str(home),
        str(tmp_path / "s.eml"), "-o", "-", env={"PW": PW},
    )  # fmt: skip
    assert "from the directory" in opened.stdout

    _plant(slapd, ldap_base, "carol@example.com", _foreign_certificate("carol@example.com"))
    _plant(slapd, ldap_base, "dave@example.com", dave_enc)
    for email, reason, code in (
        ("carol@example.com", "not issued by the profile's CA", errors.ExitCode.NEGATIVE),
        ("dave@example.com", "revoked", errors.ExitCode.NEGATIVE),
    ):
        out = tmp_path / f"{email}.eml"
        refused = hsmkm(*common, "--to", email, str(note), "-o", str(out), check=False)
        assert refused.returncode == code, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hsmkm: error: ") and reason in lines[0], refused.stderr
        assert email in lines[0] and not out.exists()

    unknown = hsmkm(*common, "--to", "nobody@example.com", str(note), "-o", str(tmp_path / "n.eml"), check=False)
    assert unknown.returncode == errors.ExitCode.BAD_INPUT and "no certificate for nobody@example.com" in unknown.stderr
