"""Certificate profiles (RFC 5280; S/MIME per RFC 8550/8551): the CA and the two user certs.

Builders take the CA's private key as a cryptography key object, so a key on a token
signs through the same code.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsmkm.keys.base import PrivateKey, PublicKey

# A little backdating absorbs clients whose clocks run slightly behind the KM's.
BACKDATE = timedelta(minutes=5)


class CertKind(str, Enum):
    SIGN = "sign"
    ENCRYPT = "encrypt"


@dataclass(frozen=True)
class PublicationUrls:
    """Where the KM's HOME/pub/ is served; named in every certificate."""

    base: str

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
    """A positive random serial of at most 159 bits (so its DER fits 20 octets), non-zero."""
    while True:
        serial = secrets.randbits(159)
        if serial >> 64:  # at least 64 bits of entropy in the encoding, per CA/B practice
            return serial


def signature_hash(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _ski(public_key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


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
    """A CA certificate: self-signed unless ``issuer_cert`` is given."""
    ski = _ski(public_key)
    if issuer_cert is None:
        issuer = subject
        aki = x509.AuthorityKeyIdentifier(ski.digest, None, None)
    else:
        issuer = issuer_cert.subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(ca_key, signature_hash(ca_key))


def build_ca_csr(subject: x509.Name, ca_key: PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for a subordinate CA, asking for the CA profile's extensions."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, signature_hash(ca_key))
    )


@functools.lru_cache(maxsize=64)
def _user_base(kind: CertKind, rsa_key: bool, issuer_cert: x509.Certificate, urls: PublicationUrls) -> x509.CertificateBuilder:
    """The extensions every user certificate of this kind shares, built once per issuer."""
    issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    ku = (
        x509.KeyUsage(True, True, False, False, False, False, False, False, False)
        if kind is CertKind.SIGN
        else x509.KeyUsage(False, False, rsa_key, False, not rsa_key, False, False, False, False)
    )

    def point(url: str) -> list[x509.DistributionPoint]:
        return [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]

    return (
        x509.CertificateBuilder()
        .issuer_name(issuer_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
        .add_extension(x509.CRLDistributionPoints(point(urls.full_crl)), critical=False)
        .add_extension(x509.FreshestCRL(point(urls.delta_crl)), critical=False)
        .add_extension(
            x509.AuthorityInformationAccess(
                [x509.AccessDescription(x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(urls.ca_cert))]
            ),
            critical=False,
        )
    )


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
) -> x509.Certificate:
    """A user's signing or encryption certificate (S/MIME, emailProtection, address in SAN)."""
    base = _user_base(kind, isinstance(public_key, rsa.RSAPublicKey), issuer_cert, urls)
    builder = (
        base.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or email)]))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before - BACKDATE)
        .not_valid_after(min(not_after, issuer_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(_ski(public_key), critical=False)
    )
    return builder.sign(ca_key, signature_hash(ca_key))
