"""Shared pieces of the EST codec tests: a throwaway CA and CSRs built by hand."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hsmkm.der import der_int, der_oid, seq, tlv
from hsmkm.keys.base import KeyEntry, KeyRole, PrivateKey
from hsmkm.x509 import profiles
from hsmkm.x509.names import parse_dn

NOW = datetime.now(UTC)


def make_ca(key: PrivateKey, name: str = "CN=EST test CA,O=Example,C=DE") -> KeyEntry:
    cert = profiles.build_ca_certificate(
        parse_dn(name), key.public_key(), key, profiles.random_serial(), NOW, NOW + timedelta(days=365)
    )
    return KeyEntry(key, cert, KeyRole.CA)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def csr_with_attributes(key: ec.EllipticCurvePrivateKey, attributes: list[tuple[str, list[bytes]]]) -> bytes:
    """A CSR signed by ``key`` whose attributes are exactly ``attributes`` (type, value DERs),
    encoded by hand (DER: each SET OF sorted) so that tests can send what cryptography's builder
    would not write."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    attrs = b"".join(sorted(seq(der_oid(oid), tlv(0x31, b"".join(sorted(values)))) for oid, values in attributes))
    cri = seq(der_int(0), seq(), spki, tlv(0xA0, attrs))
    signature = key.sign(cri, ec.ECDSA(hashes.SHA256()))
    return seq(cri, seq(der_oid("1.2.840.10045.4.3.2")), tlv(0x03, b"\x00" + signature))


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, input=input, timeout=60, check=False)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
