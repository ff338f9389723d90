"""CSR intake for simpleenroll and serverkeygen (RFC 7030 §4.2.1, §4.4.1): a base64 PKCS#10
of at most 64 KiB whose signature verifies, and for serverkeygen the DecryptKeyIdentifier
(id-aa-decryptKeyID, §4.4.1.1) and the key wraps its SMIMECapabilities allow (§4.4.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from asn1crypto import core
from asn1crypto import csr as asn1csr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from hsmkm import errors
from hsmkm.est import transfer
from hsmkm.est.csrattrs import OID_DECRYPT_KEY_ID
from hsmkm.keys.algorithms import digest_for_key
from hsmkm.keys.base import PrivateKey

MAX_CSR = 64 << 10
MAX_KEY_ID = 64
OID_ASYMM_DECRYPT_KEY_ID = "1.2.840.113549.1.9.16.2.54"  # RFC 7030 §4.4.1.2, not supported
OID_SMIME_CAPABILITIES = "1.2.840.113549.1.9.15"
OID_AES256_WRAP = "2.16.840.1.101.3.4.1.45"
_PEM = re.compile(
    rb"-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----(.*?)-----END (?:NEW )?CERTIFICATE REQUEST-----", re.DOTALL
)


@dataclass(frozen=True)
class EstCsr:
    """A CSR as EST received it: parsed, its proof of possession checked."""

    der: bytes
    csr: x509.CertificateSigningRequest
    decrypt_key_id: bytes | None  # the DecryptKeyIdentifier, when the CSR carries one
    key_wraps: list[str] | None  # key-wrap OIDs of its SMIMECapabilities, None without one


def read(body: bytes) -> EstCsr:
    """A simpleenroll/serverkeygen body: base64 DER (line breaks or none), or PEM as openssl
    writes it. Anything else, more than 64 KiB, or a signature that fails is refused."""
    if len(body) > transfer.encoded_limit(MAX_CSR):
        raise errors.MalformedInput(f"the CSR: larger than {MAX_CSR} octets")
    pem = _PEM.fullmatch(body.strip())
    der = transfer.decode(pem.group(1) if pem else body, MAX_CSR, "the CSR")
    return parse(der)


def parse(der: bytes) -> EstCsr:
    what = "the CSR"
    if len(der) > MAX_CSR:
        raise errors.MalformedInput(f"{what}: larger than {MAX_CSR} octets")
    try:
        csr = x509.load_der_x509_csr(der)
    except errors.CERTIFICATE_PARSE_ERRORS:
        raise errors.MalformedInput(f"{what}: not a PKCS#10 request") from None
    with errors.malformed(what):
        _ = csr.extensions  # parsed lazily: a bad extension must fail here
        csr.public_key()
        valid = csr.is_signature_valid
        key_id, wraps = _attributes(der)
    if not valid:
        raise errors.SignatureInvalid("the CSR's signature does not verify (no proof of possession)")
    return EstCsr(der, csr, key_id, wraps)


def _attributes(der: bytes) -> tuple[bytes | None, list[str] | None]:
    info = asn1csr.CertificationRequest.load(der, strict=True)["certification_request_info"]
    seen: set[str] = set()
    key_id: bytes | None = None
    wraps: list[str] | None = None
    for attr in info["attributes"]:
        oid = attr["type"].dotted
        if oid in seen:
            raise errors.MalformedInput(f"the CSR: attribute {oid} given twice")
        seen.add(oid)
        values = _AnySet.load(attr["values"].dump(), strict=True)
        if oid == OID_DECRYPT_KEY_ID:
            key_id = _single(values, core.OctetString, oid).native
            if not 1 <= len(key_id) <= MAX_KEY_ID:
                raise errors.MalformedInput(
                    f"the CSR: a DecryptKeyIdentifier of {len(key_id)} octets (1 to {MAX_KEY_ID})"
                )
        elif oid == OID_SMIME_CAPABILITIES:
            caps = _single(values, _Capabilities, oid)
            wraps = [c["capability_id"].dotted for c in caps]
        elif oid == OID_ASYMM_DECRYPT_KEY_ID:
            raise errors.UnsupportedAlgorithm(
                "the CSR asks for the key under an asymmetric key (only a key from the code)"
            )
    return key_id, wraps


class _AnySet(core.SetOf):
    _child_spec = core.Any


class _Capability(core.Sequence):
    _fields = [("capability_id", core.ObjectIdentifier), ("parameters", core.Any, {"optional": True})]  # noqa: RUF012 (asn1crypto reads it)


_V = TypeVar("_V", bound=core.Asn1Value)


class _Capabilities(core.SequenceOf):
    _child_spec = _Capability


def _single(values: _AnySet, spec: type[_V], oid: str) -> _V:
    if len(values) != 1:
        raise errors.MalformedInput(f"the CSR: attribute {oid} must have one value")
    return spec.load(values[0].dump(), strict=True)


def for_server_keygen(req: EstCsr) -> bytes:
    """The DecryptKeyIdentifier a serverkeygen CSR must carry (no plain key is ever sent), after
    checking its SMIMECapabilities, if any, allow AES-256 key wrap."""
    if req.decrypt_key_id is None:
        raise errors.PolicyViolation(
            "serverkeygen needs a DecryptKeyIdentifier attribute in the CSR (RFC 7030 §4.4.1.1)"
        )
    if req.key_wraps is not None and OID_AES256_WRAP not in req.key_wraps:
        raise errors.UnsupportedAlgorithm("the CSR's SMIMECapabilities do not allow AES-256 key wrap")
    return req.decrypt_key_id


def build(key: PrivateKey, email: str, decrypt_key_id: bytes | None = None) -> bytes:
    """Client side: a DER CSR for ``key`` naming ``email`` (SAN rfc822Name), with the
    DecryptKeyIdentifier attribute for serverkeygen when ``decrypt_key_id`` is given."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    )
    if decrypt_key_id is not None:
        if not 1 <= len(decrypt_key_id) <= MAX_KEY_ID:
            raise errors.BadInput(f"a DecryptKeyIdentifier has 1 to {MAX_KEY_ID} octets")
        builder = builder.add_attribute(
            x509.ObjectIdentifier(OID_DECRYPT_KEY_ID), decrypt_key_id, _tag=_ASN1Type.OctetString
        )
    return builder.sign(key, digest_for_key(key).builder_hash()).public_bytes(serialization.Encoding.DER)
