"""Certificate profiles: pkilint (RFC 5280) reports nothing; openssl parses and verifies."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.keys.base import PrivateKey
from hsmkm.x509 import profiles
from hsmkm.x509.names import parse_dn
from hsmkm.x509.profiles import PublicationUrls

BIN = Path(sys.executable).parent
NOW = datetime.now(UTC)
URLS = PublicationUrls("http://pki.example/hsmkm/")
CA_NAME = parse_dn("CN=hsmkm CA,O=Example,C=DE")


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _lint(tool: str, path: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / tool), "lint", *args, "-s", "WARNING", str(path)], capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    return out.stdout.strip()


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


@pytest.fixture(scope="module", params=["rsa3072", "p256", "p384"])
def ca(request: pytest.FixtureRequest) -> tuple[PrivateKey, x509.Certificate]:
    key: PrivateKey
    if request.param == "rsa3072":
        key = rsa.generate_private_key(65537, 3072)
    else:
        key = ec.generate_private_key(ec.SECP256R1() if request.param == "p256" else ec.SECP384R1())
    cert = profiles.build_ca_certificate(
        CA_NAME, key.public_key(), key, profiles.random_serial(), NOW, NOW + timedelta(days=3650)
    )
    return key, cert


@pytest.fixture(scope="module")
def user_keys() -> dict[str, PrivateKey]:
    return {"rsa": rsa.generate_private_key(65537, 2048), "ec": ec.generate_private_key(ec.SECP256R1())}


@pytest.mark.interop
def test_ca_certificate_profile(ca: tuple[PrivateKey, x509.Certificate], tmp_path: Path) -> None:
    key, cert = ca
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert cert.issuer == cert.subject == CA_NAME
    assert cert.not_valid_before_utc <= NOW - profiles.BACKDATE + timedelta(seconds=1)
    expected_hash = (
        hashes.SHA384 if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == 384 else hashes.SHA256
    )
    assert isinstance(cert.signature_hash_algorithm, expected_hash)
    cert.verify_directly_issued_by(cert)
    path = _pem(tmp_path / "ca.pem", cert)
    assert _lint("lint_pkix_cert", path) == ""
    out = _openssl("x509", "-in", str(path), "-noout", "-text")
    assert out.returncode == 0 and "CA:TRUE" in out.stdout and "Certificate Sign, CRL Sign" in out.stdout
    assert _openssl("verify", "-CAfile", str(path), str(path)).returncode == 0


@pytest.mark.interop
@pytest.mark.parametrize("user_alg", ["rsa", "ec"])
def test_user_certificates_lint_clean_and_verify(
    ca: tuple[PrivateKey, x509.Certificate], user_keys: dict[str, PrivateKey], user_alg: str, tmp_path: Path
) -> None:
    ca_key, ca_cert = ca
    ca_path = _pem(tmp_path / "ca.pem", ca_cert)
    public_key = user_keys[user_alg].public_key()
    for kind in CertKind:
        cert = profiles.build_user_certificate(
            kind,
            "alice@example.com",
            "Alice Example",
            public_key,
            ca_cert,
            ca_key,
            profiles.random_serial(),
            NOW,
            NOW + timedelta(days=365),
            URLS,
        )
        cert.verify_directly_issued_by(ca_cert)
        path = _pem(tmp_path / f"{kind.value}.pem", cert)
        assert _lint("lint_pkix_cert", path) == "", kind
        text = _openssl("x509", "-in", str(path), "-noout", "-text")
        assert text.returncode == 0 and "email:alice@example.com" in text.stdout
        verify = _openssl("verify", "-CAfile", str(ca_path), str(path))
        assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify.stderr
        # openssl's smimeencrypt purpose wants keyEncipherment, which an ECDH key must not claim
        if kind is CertKind.SIGN or user_alg == "rsa":
            purpose = "smimesign" if kind is CertKind.SIGN else "smimeencrypt"
            assert _openssl("verify", "-purpose", purpose, "-CAfile", str(ca_path), str(path)).returncode == 0


def test_user_certificate_extensions(ca: tuple[PrivateKey, x509.Certificate], user_keys: dict[str, PrivateKey]) -> None:
    ca_key, ca_cert = ca
    for alg, key in user_keys.items():
        for kind in CertKind:
            cert = profiles.build_user_certificate(
                kind,
                "bob@example.com",
                None,
                key.public_key(),
                ca_cert,
                ca_key,
                profiles.random_serial(),
                NOW,
                NOW + timedelta(days=30),
                URLS,
            )
            ext = cert.extensions
            ku = ext.get_extension_for_class(x509.KeyUsage)
            assert ku.critical
            if kind is CertKind.SIGN:
                assert ku.value.digital_signature and ku.value.content_commitment
                assert not ku.value.key_encipherment and not ku.value.key_agreement
            else:
                assert not ku.value.digital_signature
                assert ku.value.key_encipherment == (alg == "rsa") and ku.value.key_agreement == (alg == "ec")
                if ku.value.key_agreement:
                    assert not ku.value.encipher_only and not ku.value.decipher_only
            eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
            assert not eku.critical and list(eku.value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
            san = ext.get_extension_for_class(x509.SubjectAlternativeName)
            assert san.value.get_values_for_type(x509.RFC822Name) == ["bob@example.com"]
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob@example.com"
            bc = ext.get_extension_for_class(x509.BasicConstraints)
            assert bc.critical and not bc.value.ca
            ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
            assert ext.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
            assert [n.value for n in cdp[0].full_name or []] == ["http://pki.example/hsmkm/crl/full.crl"]
            fresh = ext.get_extension_for_class(x509.FreshestCRL).value
            assert [n.value for n in fresh[0].full_name or []] == ["http://pki.example/hsmkm/crl/delta.crl"]
            aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
            assert [(d.access_method, d.access_location.value) for d in aia] == [
                (AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.example/hsmkm/ca.crt")
            ]
            with pytest.raises(x509.ExtensionNotFound):
                ext.get_extension_for_class(x509.CertificatePolicies)
            assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc
            assert 0 < cert.serial_number < 2**159


def test_validity_never_outlasts_the_issuer(
    ca: tuple[PrivateKey, x509.Certificate], user_keys: dict[str, PrivateKey]
) -> None:
    ca_key, ca_cert = ca
    cert = profiles.build_user_certificate(
        CertKind.SIGN,
        "c@example.com",
        "C",
        user_keys["ec"].public_key(),
        ca_cert,
        ca_key,
        profiles.random_serial(),
        NOW,
        NOW + timedelta(days=50 * 365),
        URLS,
    )
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    assert cert.not_valid_before_utc == (NOW - profiles.BACKDATE).replace(microsecond=0)


def test_smime_br_mailbox_profile_with_policy_oid(tmp_path: Path) -> None:
    """With CN = the address and the CA/B mailbox-strict OID, the S/MIME BR linter is clean too."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = profiles.build_ca_certificate(
        CA_NAME, ca_key.public_key(), ca_key, profiles.random_serial(), NOW, NOW + timedelta(days=3650)
    )
    mailbox_strict = x509.ObjectIdentifier("2.23.140.1.5.1.3")
    for alg_key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        for kind in CertKind:
            cert = profiles.build_user_certificate(
                kind,
                "alice@example.com",
                None,
                alg_key.public_key(),
                ca_cert,
                ca_key,
                profiles.random_serial(),
                NOW,
                NOW + timedelta(days=365),
                PublicationUrls("http://pki.example.com/hsmkm/"),
                policy_oid=mailbox_strict,
            )
            policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
            assert not policies.critical and policies.value[0].policy_identifier == mailbox_strict
            path = _pem(tmp_path / "u.pem", cert)
            assert _lint("lint_cabf_smime_cert", path, "-d") == ""
            assert _lint("lint_pkix_cert", path) == ""


@pytest.mark.interop
def test_subordinate_ca(tmp_path: Path) -> None:
    root_key = rsa.generate_private_key(65537, 3072)
    root = profiles.build_ca_certificate(
        parse_dn("CN=Root,O=Example"),
        root_key.public_key(),
        root_key,
        profiles.random_serial(),
        NOW,
        NOW + timedelta(days=3650),
        path_length=1,
    )
    sub_key = ec.generate_private_key(ec.SECP384R1())
    csr = profiles.build_csr_for_subordinate(parse_dn("CN=hsmkm sub CA,O=Example"), sub_key)
    assert csr.is_signature_valid and isinstance(csr.signature_hash_algorithm, hashes.SHA384)
    assert csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sub = profiles.build_ca_certificate(
        csr.subject,
        csr.public_key(),  # type: ignore[arg-type]
        root_key,
        profiles.random_serial(),
        NOW,
        NOW + timedelta(days=10 * 3650),
        issuer_cert=root,
    )
    sub.verify_directly_issued_by(root)
    assert sub.not_valid_after_utc == root.not_valid_after_utc
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert sub.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    user_key = ec.generate_private_key(ec.SECP256R1())
    user = profiles.build_user_certificate(
        CertKind.SIGN,
        "d@example.com",
        "D",
        user_key.public_key(),
        sub,
        sub_key,
        profiles.random_serial(),
        NOW,
        NOW + timedelta(days=30),
        URLS,
    )
    root_pem, sub_pem, user_pem = (
        _pem(tmp_path / f"{n}.pem", c) for n, c in (("root", root), ("sub", sub), ("user", user))
    )
    for path in (root_pem, sub_pem, user_pem):
        assert _lint("lint_pkix_cert", path) == ""
    out = _openssl("verify", "-CAfile", str(root_pem), "-untrusted", str(sub_pem), str(user_pem))
    assert out.returncode == 0, out.stderr


def test_random_serials() -> None:
    serials = {profiles.random_serial() for _ in range(2000)}
    assert len(serials) == 2000
    assert all(2**64 <= s < 2**159 for s in serials)
    assert max(serials).bit_length() >= 150  # the top bits are used


def test_bad_requests_are_refused(ca: tuple[PrivateKey, x509.Certificate], user_keys: dict[str, PrivateKey]) -> None:
    ca_key, ca_cert = ca
    pub = user_keys["ec"].public_key()

    def user(
        email: str = "e@example.com",
        name: str | None = None,
        start: datetime = NOW,
        end: datetime = NOW + timedelta(days=1),
    ) -> None:
        profiles.build_user_certificate(CertKind.SIGN, email, name, pub, ca_cert, ca_key, 1, start, end, URLS)

    for email in ("", "no-at-sign", "@example.com", "a@", "\u00e4@example.com", "a b@example.com"):
        with pytest.raises(errors.BadInput):
            user(email=email)
    with pytest.raises(errors.BadInput):
        user(name="x" * 65)
    with pytest.raises(errors.BadInput):
        user(end=NOW - timedelta(days=1))
    with pytest.raises(errors.BadInput):
        PublicationUrls("pki.example/hsmkm")
    long_email = "a" * 70 + "@example.com"
    cert = profiles.build_user_certificate(
        CertKind.SIGN, long_email, None, pub, ca_cert, ca_key, 1, NOW, NOW + timedelta(days=1), URLS
    )
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.RFC822Name
    ) == [long_email]


def test_parse_dn() -> None:
    name = parse_dn("CN=hsmkm CA,O=Example,C=DE")
    assert name.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    assert parse_dn("O=Only", require_cn=False).rfc4514_string() == "O=Only"
    for bad in ("", "CN=", "C=DEU,CN=x", "nonsense", "O=Only", "CN=a,,O=b"):
        with pytest.raises(errors.MalformedInput):
            parse_dn(bad)
