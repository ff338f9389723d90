"""The LDAP publisher: after enrollment the user's entry holds both certificates and the
certs-only bundle as mail clients read them; after revocation they are gone; the CA entry holds
the CA certificate and the CRLs that openssl verifies."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import hsmkm
from hsmkm.bench.slapd import Slapd
from ldap_helpers import configure, enroll, openssl, values

pytestmark = pytest.mark.interop

ALICE = "alice@example.com"


def test_enroll_publishes_both_certificates_and_the_bundle_revocation_removes_them_and_the_crl_verifies(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=LDAP CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    configure(home, slapd, ldap_base)
    enroll(home, ALICE, tmp_path / "alice.epf")

    found = slapd.search(ldap_base, f"(mail={ALICE})", "userCertificate;binary", "userSMIMECertificate")
    certs = values(found, "userCertificate;binary")
    bundles = values(found, "userSMIMECertificate")
    assert len(certs) == 2 and len(bundles) == 1
    ca = x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes())
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    published = {(home / "pub" / "certs" / f"{ALICE}.{k}.crt").read_bytes() for k in ("enc", "sign")}
    assert set(certs) == published  # the current signing and encryption certificates
    for der in certs:
        parsed = openssl("x509", "-inform", "DER", "-noout", "-subject", "-ext", "subjectAltName", input=der)
        assert parsed.returncode == 0 and ALICE in parsed.stdout.decode(), parsed.stderr
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        assert openssl("verify", "-CAfile", str(ca_pem), "-partial_chain", input=pem).returncode == 0
    bundle = openssl("pkcs7", "-inform", "DER", "-print_certs", input=bundles[0])
    assert bundle.returncode == 0, bundle.stderr
    assert bundle.stdout.decode().count("BEGIN CERTIFICATE") == 2

    hsmkm("user", "revoke", ALICE, "--reason", "keyCompromise", home=home)
    hsmkm("crl", "publish", home=home)
    hsmkm("crl", "publish", "--delta", home=home)
    gone = slapd.search(ldap_base, f"(mail={ALICE})", "userCertificate;binary", "userSMIMECertificate")
    assert values(gone, "userCertificate;binary") == [] and values(gone, "userSMIMECertificate") == []

    ca_entry = slapd.search(
        ldap_base,
        "(objectClass=pkiCA)",
        "cACertificate;binary",
        "certificateRevocationList;binary",
        "deltaRevocationList;binary",
    )
    assert values(ca_entry, "cACertificate;binary") == [ca.public_bytes(serialization.Encoding.DER)]
    for attr, kind in (("certificateRevocationList;binary", "full"), ("deltaRevocationList;binary", "delta")):
        (crl_der,) = values(ca_entry, attr)
        assert crl_der == (home / "pub" / "crl" / f"{kind}.crl").read_bytes()
        checked = openssl("crl", "-inform", "DER", "-CAfile", str(ca_pem), "-noout", "-text", input=crl_der)
        assert checked.returncode == 0 and "verify OK" in checked.stderr.decode(), checked.stderr
    full = values(ca_entry, "certificateRevocationList;binary")[0]
    revoked = {r.serial_number for r in x509.load_der_x509_crl(full)}
    assert {x509.load_der_x509_certificate(d).serial_number for d in certs} <= revoked


def test_a_crl_older_than_the_directorys_is_not_installed(tmp_path: Path, slapd: Slapd, ldap_base: str) -> None:
    """Compare-and-swap: a publisher holding an older CRL number leaves the newer one."""
    from hsmkm.km.config import LdapConfig
    from hsmkm.km.publisher import CrlKind
    from hsmkm.km.publishers.ldap import LdapPublisher

    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=LDAP CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    configure(home, slapd, ldap_base)
    hsmkm("crl", "publish", home=home)
    first = (home / "pub" / "crl" / "full.crl").read_bytes()
    hsmkm("crl", "publish", home=home)
    second = (home / "pub" / "crl" / "full.crl").read_bytes()
    pw = slapd.password
    publisher = LdapPublisher(LdapConfig(slapd.url, ldap_base, slapd.root_dn, None), lambda: pw)
    number_of_first = x509.load_der_x509_crl(first).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert publisher.crl(CrlKind.FULL, number_of_first, first) is False
    entry = slapd.search(ldap_base, "(objectClass=pkiCA)", "certificateRevocationList;binary")
    assert values(entry, "certificateRevocationList;binary") == [second]
