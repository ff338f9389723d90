"""The certs-only PKCS#7 of EST's cacerts and enrollment responses (RFC 7030 §4.1.3, §4.2.3):
a SignedData with no content and no signers, only certificates (RFC 5652 §5; RFC 8551 §3.2.2)."""

from __future__ import annotations

from collections.abc import Sequence

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.der import der_oid, seq, tlv

MAX_CERTS = 32
MAX_SIZE = 1 << 20
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_DATA = "1.2.840.113549.1.7.1"


def encode(certs: Sequence[x509.Certificate]) -> bytes:
    """DER ContentInfo: SignedData v1, no digest algorithms, absent content, the certificates,
    no signers."""
    if not certs:
        raise errors.BadInput("a certs-only message needs at least one certificate")
    body = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
    signed_data = seq(b"\x02\x01\x01", tlv(0x31, b""), seq(der_oid(_OID_DATA)), tlv(0xA0, body), tlv(0x31, b""))
    return seq(der_oid(_OID_SIGNED_DATA), tlv(0xA0, signed_data))


def decode(der: bytes) -> list[x509.Certificate]:
    """The certificates of a certs-only message, in its order. Signers, content or anything but
    plain X.509 certificates are refused."""
    what = "the certs-only PKCS#7"
    if len(der) > MAX_SIZE:
        raise errors.MalformedInput(f"{what}: larger than {MAX_SIZE} octets")
    with errors.malformed(what):
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != _OID_SIGNED_DATA:
            raise errors.MalformedInput(f"{what}: not a SignedData")
        sd = info["content"]
        if len(sd["signer_infos"]) != 0:
            raise errors.MalformedInput(f"{what}: it has signers")
        encap = sd["encap_content_info"]
        if encap["content"].native is not None:
            raise errors.MalformedInput(f"{what}: it has content")
        choices = sd["certificates"]
        if len(choices) == 0 or len(choices) > MAX_CERTS:
            raise errors.MalformedInput(f"{what}: {len(choices)} certificates (1 to {MAX_CERTS})")
        out: list[x509.Certificate] = []
        for choice in choices:
            if choice.name != "certificate":
                raise errors.MalformedInput(f"{what}: a {choice.name}, not a certificate")
            out.append(_certificate(choice.chosen.dump()))
        return out


def _certificate(der: bytes) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = cert.extensions  # parsed lazily: a bad extension must fail here
    except errors.CERTIFICATE_PARSE_ERRORS:
        raise errors.MalformedInput("the certs-only PKCS#7: a certificate does not parse") from None
    return cert
