"""Certificate profiles (RFC 5280; S/MIME per RFC 8550/8551): the CA and the two user certs.

Builders take the CA's private key as a cryptography key object, so a key on a token signs
through the same code. Every certificate is backdated by ``BACKDATE`` so that a relying
party whose clock runs a little behind the KM's does not see a not-yet-valid certificate.
Profile choices (all PKIX-lint clean, see tests/test_profiles.py):

- CA: basicConstraints critical CA:true (pathLen 0 unless told), keyUsage critical
  keyCertSign+cRLSign+digitalSignature, SKI (SHA-1 of the key, RFC 5280 method 1), AKI
  (its own SKI when self-signed, which RFC 5280 permits and pkilint accepts).
- User: basicConstraints critical CA:false, keyUsage critical (SIGN: digitalSignature +
  nonRepudiation; ENCRYPT: keyEncipherment for RSA, keyAgreement for EC), EKU
  emailProtection, SAN rfc822Name, subject CN = the name (else the address), SKI, AKI,
  CRL distribution point (full CRL), freshestCRL (delta CRL), AIA caIssuers, and an optional
  certificatePolicies OID. The validity never outlasts the issuer's.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from hsmkm import errors, smimecaps
from hsmkm.certnames import CertKind
from hsmkm.keys.algorithms import digest_for_key
from hsmkm.keys.base import PrivateKey, PublicKey

BACKDATE = timedelta(minutes=5)
SERIAL_BITS = 159  # positive and at most 20 octets in DER (RFC 5280 section 4.1.2.2)
_MIN_SERIAL_ENTROPY_BITS = 64  # CA/B Forum: at least 64 bits from a CSPRNG


@dataclass(frozen=True)
class PublicationUrls:
    """Where the KM's HOME/pub/ is served; named in every user certificate."""

    base: str

    def __post_init__(self) -> None:
        if "://" not in self.base or not self.base.endswith("/"):
            raise errors.BadInput(f"publication base URL must be absolute and end with '/': {self.base!r}")

    @property
    def ca_cert(self) -> str:
        return self.base + "ca.crt"

    @property
    def full_crl(self) -> str:
        return self.base + "crl/full.crl"

    @property
    def delta_crl(self) -> str:
        return self.base + "crl/delta.crl"


def random_serial() -> int:
    """A positive random serial below 2**159 (fits 20 DER octets) and at least 2**64."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        # almost never loops; the floor keeps >= 64 bits of entropy visible in the encoding
        if serial >> _MIN_SERIAL_ENTROPY_BITS:
            return serial


def _check_validity(not_before: datetime, not_after: datetime) -> None:
    if not_after <= not_before:
        raise errors.BadInput("a certificate must end after it starts")


def _ski(public_key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki_for(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # an issuer without SKI (some external roots): derive it the same way
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def build_ca_certificate(
    subject: x509.Name,
    public_key: PublicKey,
    ca_key: PrivateKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    issuer_cert: x509.Certificate | None = None,
    path_length: int | None = 0,
) -> x509.Certificate:
    """A CA certificate for ``public_key``: self-signed unless ``issuer_cert`` (then ``ca_key`` is the issuer's)."""
    _check_validity(not_before, not_after)
    ski = _ski(public_key)
    if issuer_cert is None:
        issuer = subject
        aki = x509.AuthorityKeyIdentifier(ski.digest, None, None)
    else:
        issuer = issuer_cert.subject
        aki = _aki_for(issuer_cert)
        not_after = min(not_after, issuer_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(ca_key, digest_for_key(ca_key).builder_hash())


def build_csr_for_subordinate(
    subject: x509.Name, ca_key: PrivateKey, path_length: int | None = 0
) -> x509.CertificateSigningRequest:
    """A CSR for the KM's key as a subordinate CA, asking for the CA profile's extensions."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(_ski(ca_key.public_key()), critical=False)
        .sign(ca_key, digest_for_key(ca_key).builder_hash())
    )


def _user_key_usage(kind: CertKind, rsa_key: bool) -> x509.KeyUsage:
    sign = kind is CertKind.SIGN
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=sign,
        key_encipherment=not sign and rsa_key,
        data_encipherment=False,
        key_agreement=not sign and not rsa_key,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@functools.lru_cache(maxsize=64)
def _user_base(
    kind: CertKind,
    rsa_key: bool,
    issuer_cert: x509.Certificate,
    urls: PublicationUrls,
    policy_oid: x509.ObjectIdentifier | None,
) -> x509.CertificateBuilder:
    """The extensions every user certificate of this kind shares, built once per issuer."""

    def point(url: str) -> list[x509.DistributionPoint]:
        return [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]

    builder = (
        x509.CertificateBuilder()
        .issuer_name(issuer_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_user_key_usage(kind, rsa_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(_aki_for(issuer_cert), critical=False)
        .add_extension(x509.CRLDistributionPoints(point(urls.full_crl)), critical=False)
        .add_extension(x509.FreshestCRL(point(urls.delta_crl)), critical=False)
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(urls.ca_cert)
                    )
                ]
            ),
            critical=False,
        )
    )
    if policy_oid is not None:
        builder = builder.add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(policy_oid, None)]), critical=False
        )
    return builder


def _check_email(email: str) -> None:
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or not email.isascii() or any(c.isspace() for c in email):
        raise errors.BadInput(f"not an ASCII e-mail address: {email!r}")


def build_user_certificate(
    kind: CertKind,
    email: str,
    name: str | None,
    public_key: PublicKey,
    issuer_cert: x509.Certificate,
    ca_key: PrivateKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    urls: PublicationUrls,
    policy_oid: x509.ObjectIdentifier | None = None,
    capabilities: Sequence[str] | None = None,
) -> x509.Certificate:
    """A user's signing or encryption certificate (S/MIME, emailProtection, address in SAN);
    ``capabilities`` (OIDs, best first) become an SMIMECapabilities extension (RFC 4262)."""
    _check_validity(not_before, not_after)
    _check_email(email)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    if not is_rsa and not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise errors.UnsupportedAlgorithm(f"user key type {type(public_key).__name__}")
    if name is not None and not 1 <= len(name) <= 64:
        raise errors.BadInput("a user's name must be 1 to 64 characters (an X.520 common name)")
    base = _user_base(kind, is_rsa, issuer_cert, urls, policy_oid)
    # the SAN carries the address; the CN is for display, so a long address is cut to fit
    common_name = name if name is not None else email[:64]
    builder = (
        base.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before - BACKDATE)
        .not_valid_after(min(not_after, issuer_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(_ski(public_key), critical=False)
    )
    if capabilities is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(smimecaps.OID_SMIME_CAPABILITIES), smimecaps.encode(capabilities)
            ),
            critical=False,
        )
    return builder.sign(ca_key, digest_for_key(ca_key).builder_hash())
