"""CMS SignedData (RFC 5652) for S/MIME (RFC 8551): sign with the key interface, verify with
an explicit validation context."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from asn1crypto import cms, core
from asn1crypto import x509 as asn1x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsmkm import errors, smimecaps
from hsmkm.certnames import email_of
from hsmkm.cms.protect import Restored
from hsmkm.cms.validation import ValidationContext, validate_signer
from hsmkm.der import der_int, der_oid, der_time, seq, tlv
from hsmkm.keys.algorithms import Digest, digest_for_key, signature_scheme
from hsmkm.keys.base import KeyEntry


@dataclass
class VerifyResult:
    signer: x509.Certificate
    email: str | None
    signing_time: datetime | None
    content: bytes
    warnings: list[str] = field(default_factory=list)
    capabilities: list[str] | None = None  # SMIMECapabilities OIDs, the signer's order
    encryption_certificate: x509.Certificate | None = None  # named by an encryption key preference
    outer_headers: list[tuple[str, str]] = field(default_factory=list)
    restored: Restored | None = None  # the message as its sender wrote it (header protection undone)


OID_SMIME_CAPABILITIES = smimecaps.OID_SMIME_CAPABILITIES
OID_ENC_KEY_PREF = "1.2.840.113549.1.9.16.2.11"  # RFC 8551 §2.5.3 SMIMEEncryptionKeyPreference
OID_MS_ENC_KEY_PREF = "1.3.6.1.4.1.311.16.4"  # Microsoft's: a bare IssuerAndSerialNumber


OID_DATA = "1.2.840.113549.1.7.1"
_OID_DATA = der_oid(OID_DATA)


def _attribute(oid: str, value: bytes) -> bytes:
    return seq(der_oid(oid), tlv(0x31, value))


def issuer_and_serial(cert: x509.Certificate) -> bytes:
    return seq(cert.issuer.public_bytes(), der_int(cert.serial_number))


def signer_info(
    digest: bytes,
    signer: KeyEntry,
    signing_time: datetime,
    encryption_cert: x509.Certificate | None = None,
    capabilities: bytes | None = None,
) -> cms.SignerInfo:
    """A SignerInfo over a content digest: the signed attributes (encoded here directly, as
    DER) signed with the key interface. ``capabilities`` is an SMIMECapabilities SEQUENCE
    (what the signer reads); ``encryption_cert`` is named as the one to encrypt replies to,
    both in the RFC 8551 attribute and in Microsoft's, which Outlook reads."""
    scheme = signature_scheme(signer.key)
    cert = signer.certificate
    cert_hash = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    attrs = [
        _attribute("1.2.840.113549.1.9.3", _OID_DATA),  # contentType
        _attribute("1.2.840.113549.1.9.5", der_time(signing_time)),  # signingTime
        _attribute("1.2.840.113549.1.9.4", tlv(0x04, digest)),  # messageDigest
        # signingCertificateV2 with one ESSCertIDv2 (default hash SHA-256, left out as DER requires)
        _attribute("1.2.840.113549.1.9.16.2.47", seq(seq(seq(tlv(0x04, cert_hash))))),
    ]
    if capabilities is not None:
        attrs.append(_attribute(OID_SMIME_CAPABILITIES, capabilities))
    if encryption_cert is not None:
        ias = issuer_and_serial(encryption_cert)
        attrs.append(_attribute(OID_ENC_KEY_PREF, b"\xa0" + ias[1:]))  # [0] IMPLICIT issuerAndSerialNumber
        attrs.append(_attribute(OID_MS_ENC_KEY_PREF, ias))
    attrs.sort()  # DER sorts a SET OF by encoding; verifiers re-encode before checking
    to_sign = tlv(0x31, b"".join(attrs))  # the SET OF that RFC 5652 §5.4 says is signed
    der = seq(
        b"\x02\x01\x01",
        issuer_and_serial(cert),
        scheme.digest.algorithm_identifier,
        tlv(0xA0, b"".join(attrs)),
        scheme.algorithm_identifier,
        tlv(0x04, scheme.sign(signer.key, to_sign)),
    )
    return cms.SignerInfo.load(der)


def certificates_der(signer: KeyEntry, extra_certs: list[x509.Certificate]) -> bytes:
    """The [0] IMPLICIT certificates field: the signer's certificate, then the others."""
    body = b"".join(c.public_bytes(serialization.Encoding.DER) for c in [signer.certificate, *extra_certs])
    return tlv(0xA0, body)


def sign(
    content: bytes,
    signer: KeyEntry,
    extra_certs: list[x509.Certificate],
    detached: bool,
    signing_time: datetime,
    encryption_cert: x509.Certificate | None = None,
    capabilities: bytes | None = None,
) -> bytes:
    """A DER ContentInfo holding SignedData over ``content`` (absent from it when detached).
    ``extra_certs`` should hold ``encryption_cert`` for a correspondent to reply with."""
    digest = digest_for_key(signer.key)
    si = signer_info(hashlib.new(digest.value, content).digest(), signer, signing_time, encryption_cert, capabilities)
    certs = [
        asn1x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
        for c in [signer.certificate, *extra_certs]
    ]
    body = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": digest.value}],
            "encap_content_info": {"content_type": "data", "content": None if detached else content},
            "certificates": certs,
            "signer_infos": [si],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": body}).dump()


# signatureAlgorithm values accepted per key type, with the digest each one fixes (None: the
# SignerInfo's digestAlgorithm, as for rsaEncryption, which RFC 5754 §3.2 allows).
_RSA_SIGNATURES: dict[str, Digest | None] = {
    "rsassa_pkcs1v15": None,
    "rsassa_pss": None,
    **{f"{d.value}_rsa": d for d in Digest},
}
_EC_SIGNATURES: dict[str, Digest | None] = {
    "ecdsa": None,  # id-ecPublicKey as a signature algorithm: some old signers write it
    **{f"{d.value}_ecdsa": d for d in Digest},
}


def _verify_raw(public: object, signature: bytes, data: bytes, sig_alg: str, digest: Digest, params: object) -> None:
    """Check ``signature`` with the signer's key, refusing a signatureAlgorithm that does not
    fit that key or the SignerInfo's digest."""
    digest_name = digest.value
    hash_cls = digest.hash_class
    if isinstance(public, rsa.RSAPublicKey):
        allowed = _RSA_SIGNATURES
    elif isinstance(public, ec.EllipticCurvePublicKey):
        allowed = _EC_SIGNATURES
    else:
        raise errors.UnsupportedAlgorithm(
            "unsupported algorithm: signatures other than RSA and ECDSA (Ed25519 is not supported)"
        )
    if sig_alg not in allowed:
        raise errors.UnsupportedAlgorithm(f"unsupported algorithm: signature {sig_alg} with this signer's key")
    fixed = allowed[sig_alg]
    if fixed is not None and fixed is not digest:
        raise errors.SignatureInvalid(f"the signature algorithm ({sig_alg}) and the digest ({digest_name}) differ")
    try:
        if isinstance(public, rsa.RSAPublicKey):
            if sig_alg == "rsassa_pss":
                p = params  # RSASSA-PSS-params
                pss_hash = p["hash_algorithm"]["algorithm"].native  # type: ignore[index]
                mgf = p["mask_gen_algorithm"]  # type: ignore[index]
                if (
                    pss_hash != digest_name
                    or mgf["algorithm"].native != "mgf1"
                    or mgf["parameters"]["algorithm"].native != digest_name
                ):
                    raise errors.UnsupportedAlgorithm(
                        "unsupported algorithm: RSASSA-PSS parameters that differ from the digest"
                    )
                salt = p["salt_length"].native  # type: ignore[index]
                if not isinstance(salt, int) or not 0 <= salt <= 1024:
                    raise errors.MalformedInput("RSASSA-PSS: implausible salt length")
                public.verify(signature, data, padding.PSS(padding.MGF1(hash_cls()), salt), hash_cls())
            else:
                public.verify(signature, data, padding.PKCS1v15(), hash_cls())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hash_cls()))
    except InvalidSignature:
        raise errors.SignatureInvalid("the signature does not verify") from None


def verify(
    der: bytes, detached_content: bytes | None, context: ValidationContext, content_digest: bytes | None = None
) -> VerifyResult:
    """Check the signature, the signed attributes and the signer's chain, usage, validity and
    revocation. Invalid or revoked: a NegativeAnswer (exit 1); malformed: MalformedInput."""
    with errors.malformed("signed message"):
        return _verify(der, detached_content, context, content_digest)


def _verify(
    der: bytes, detached_content: bytes | None, context: ValidationContext, content_digest: bytes | None
) -> VerifyResult:
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise errors.MalformedInput("not a signed message")
    sd = info["content"]
    encap = sd["encap_content_info"]
    econtent_type = encap["content_type"].dotted
    if econtent_type != OID_DATA:
        raise errors.MalformedInput(
            f"the signed content is {econtent_type}, not data (id-data), which is all hsmkm verifies"
        )
    content = encap["content"].native if encap["content"].native is not None else detached_content
    if content is None and content_digest is None:
        raise errors.MalformedInput("detached signature without its content")
    if content is not None and not isinstance(content, bytes):
        raise errors.MalformedInput("the signed content is not an OCTET STRING")
    certs = [x509.load_der_x509_certificate(c.chosen.dump()) for c in sd["certificates"] if c.name == "certificate"]
    signer_infos = list(sd["signer_infos"])
    if not signer_infos:
        raise errors.MalformedInput("no signer in the message")
    si = signer_infos[0]
    sid = si["sid"]
    signer_cert = None
    for cert in certs + context.extra_certs:
        if sid.name == "issuer_and_serial_number":
            if (
                cert.serial_number == sid.chosen["serial_number"].native
                and cert.issuer.public_bytes() == sid.chosen["issuer"].dump()
            ):
                signer_cert = cert
                break
        else:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.chosen.native:
                signer_cert = cert
                break
    if signer_cert is None:
        raise errors.ValidationFailed("the signer's certificate is not in the message")
    digest_name = si["digest_algorithm"]["algorithm"].native
    si_digest = Digest.named(digest_name)
    if si_digest is None:
        raise errors.UnsupportedAlgorithm(f"digest {digest_name} not supported")
    sig_alg = si["signature_algorithm"]["algorithm"].native
    signature = si["signature"].native
    signing_time = None
    attrs = si["signed_attrs"]
    read = SignedAttributes()
    if attrs.contents:
        signed_bytes = _as_set(attrs)
        read = read_signed_attributes(signed_bytes)
        digest = content_digest if content is None else hashlib.new(digest_name, content).digest()
        if read.message_digest is None or read.message_digest != digest:
            raise errors.SignatureInvalid("the content does not match the signed digest: it was altered")
        if read.content_type is None or read.content_type != econtent_type:
            raise errors.SignatureInvalid("the signed content type does not match")
        signing_time = read.signing_time
    else:
        if content is None:
            raise errors.UnsupportedAlgorithm("unsupported algorithm: a streamed message without signed attributes")
        signed_bytes = content
    if not isinstance(signature, bytes):
        raise errors.MalformedInput("the signature is not an OCTET STRING")
    _verify_raw(
        signer_cert.public_key(), signature, signed_bytes, sig_alg, si_digest, si["signature_algorithm"]["parameters"]
    )
    warnings = validate_signer(signer_cert, certs, context, signing_time)
    enc_cert = None
    if read.encryption_key is not None:
        enc_cert = next((c for c in certs if issuer_and_serial(c) == read.encryption_key), None)
    return VerifyResult(
        signer_cert, email_of(signer_cert), signing_time, content or b"", warnings, read.capabilities, enc_cert
    )


def _elements(data: bytes) -> list[bytes]:
    """The DER elements (tag, length, value) one after another in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data) or data[pos] & 0x1F == 0x1F:
            raise errors.MalformedInput("signed attributes: a truncated or multi-octet tag")
        first = data[pos + 1]
        if first < 0x80:
            length, head = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(data):
                raise errors.MalformedInput("signed attributes: a bad length")
            length, head = int.from_bytes(data[pos + 2 : pos + 2 + n], "big"), 2 + n
        end = pos + head + length
        if end > len(data):
            raise errors.MalformedInput("signed attributes: an element runs past its end")
        out.append(data[pos:end])
        pos = end
    return out


def _value(element: bytes) -> bytes:
    n = element[1]
    return element[2:] if n < 0x80 else element[2 + (n & 0x7F) :]


_SINGLE_VALUED = {
    "1.2.840.113549.1.9.3": "content_type",
    "1.2.840.113549.1.9.4": "message_digest",
    "1.2.840.113549.1.9.5": "signing_time",
}


@dataclass
class SignedAttributes:
    """What hsmkm reads from a SignerInfo's signed attributes; the rest is carried, unread."""

    content_type: str | None = None
    message_digest: bytes | None = None
    signing_time: datetime | None = None
    capabilities: list[str] | None = None
    encryption_key: bytes | None = None  # IssuerAndSerialNumber DER of the preferred encryption cert
    other: list[str] = field(default_factory=list)


def read_signed_attributes(der_set: bytes) -> SignedAttributes:
    """Parse the signed attributes SET: the ones that secure the signature strictly (exactly
    one value each, no repeats), the informative ones leniently (a value that does not parse
    is ignored, as any unknown attribute is)."""
    out = SignedAttributes()
    seen: set[str] = set()
    (whole,) = _elements(der_set)
    for a in _elements(_value(whole)):
        parts = _elements(_value(a)) if a[:1] == b"\x30" else []
        if len(parts) != 2 or parts[0][:1] != b"\x06" or parts[1][:1] != b"\x31":
            raise errors.MalformedInput("a signed attribute is not a type and a SET of values")
        oid = core.ObjectIdentifier.load(parts[0]).dotted
        if oid in seen:
            raise errors.MalformedInput(f"the signed attribute {_SINGLE_VALUED.get(oid, oid)} appears twice")
        seen.add(oid)
        values = _elements(_value(parts[1]))
        if oid in _SINGLE_VALUED:
            if len(values) != 1:
                raise errors.MalformedInput(f"the signed attribute {_SINGLE_VALUED[oid]} must have one value")
            raw = values[0]
            if oid == "1.2.840.113549.1.9.3":
                out.content_type = core.ObjectIdentifier.load(raw).dotted
            elif oid == "1.2.840.113549.1.9.4":
                out.message_digest = core.OctetString.load(raw).native
            else:
                when = cms.Time.load(raw).native
                if not isinstance(when, datetime) or when.tzinfo is None:
                    raise errors.MalformedInput("the signing time is not a time")
                out.signing_time = when
            continue
        if not values:
            continue
        try:
            if oid == OID_SMIME_CAPABILITIES:
                out.capabilities = smimecaps.decode(values[0])
            elif oid == OID_ENC_KEY_PREF and values[0][:1] == b"\xa0":
                ias = b"\x30" + values[0][1:]
                # .native parses the whole structure, so a malformed one fails here
                _ = cms.IssuerAndSerialNumber.load(ias, strict=True).native
                out.encryption_key = ias
            elif oid == OID_MS_ENC_KEY_PREF and out.encryption_key is None:
                _ = cms.IssuerAndSerialNumber.load(values[0], strict=True).native
                out.encryption_key = values[0]
            else:
                out.other.append(oid)
        except (ValueError, TypeError, KeyError, errors.MalformedInput):
            out.other.append(oid)  # an informative attribute we cannot read: ignored
    return out


def _as_set(attrs: cms.CMSAttributes) -> bytes:
    """The signed attributes as the SET OF that was signed (the [0] tag replaced)."""
    raw = attrs.dump()
    return b"\x31" + raw[1:]
