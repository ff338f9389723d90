"""The private-key part of a serverkeygen response (RFC 7030 §4.4.2): the key as an
AsymmetricKeyPackage (RFC 5958) in a SignedData signed by the KM, inside an EnvelopedData
(RFC 5652) with one KEKRecipientInfo whose kekid is the CSR's DecryptKeyIdentifier.

The KEK is today's code key (HKDF-SHA256 over the code's 160 bits, ``protocol.code_key``)
salted with the DecryptKeyIdentifier, so the client derives it from what it already has and
each request's identifier gives its own KEK. The CEK is wrapped with AES-256 key wrap
(RFC 3394, id-aes256-wrap) and the content encrypted with AES-256-CBC, which ``openssl cms
-decrypt -secretkey -secretkeyid`` opens (openssl reads GCM only in AuthEnvelopedData).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmkm import errors
from hsmkm.der import der_int, der_oid, seq, tlv
from hsmkm.keys.algorithms import digest_for_key
from hsmkm.keys.base import KeyEntry, PrivateKey
from hsmkm.protocol import code_key

OID_KEY_PACKAGE = "2.16.840.1.101.2.1.2.78.5"  # id-ct-KP-aKeyPackage, RFC 5958 §2
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
MAX_SIZE = 1 << 20
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


def kek(code: str, key_id: bytes) -> bytes:
    """The 256-bit KEK for a request: the code key salted with its DecryptKeyIdentifier."""
    return code_key(code, key_id)


@dataclass(frozen=True)
class OpenedKey:
    private_key: PrivateKey
    pkcs8: bytes


def seal(key: PrivateKey, signer: KeyEntry, kek_bytes: bytes, key_id: bytes) -> bytes:
    """DER ContentInfo (EnvelopedData) holding ``key`` for the holder of ``kek_bytes``."""
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    inner = _signed_package(seq(pkcs8), signer)
    cek = os.urandom(32)
    iv = os.urandom(16)
    padder = sympadding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padder.update(inner) + padder.finalize()) + enc.finalize()
    kekri = seq(
        der_int(4),
        seq(tlv(0x04, key_id)),
        cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"}).dump(),
        tlv(0x04, keywrap.aes_key_wrap(kek_bytes, cek)),
    )
    enveloped = seq(
        der_int(2),  # RFC 5652 §6.1: a KEKRecipientInfo (version 4) makes it 2
        tlv(0x31, tlv(0xA2, _strip(kekri))),  # [2] IMPLICIT KEKRecipientInfo
        seq(
            der_oid(OID_SIGNED_DATA),
            algos.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv}).dump(),
            tlv(0x80, ciphertext),
        ),
    )
    return seq(der_oid(OID_ENVELOPED_DATA), tlv(0xA0, enveloped))


def _strip(der: bytes) -> bytes:
    """The contents of a TLV (its tag and length cut off)."""
    n = der[1] & 0x7F if der[1] & 0x80 else 0
    return der[2 + n :]


def _signed_package(package: bytes, signer: KeyEntry) -> bytes:
    """SignedData (RFC 5652 §5, version 3 for a content type other than data) over the package."""
    digest_name = digest_for_key(signer.key).value
    attrs = sorted(
        [
            seq(der_oid(OID_CONTENT_TYPE), tlv(0x31, der_oid(OID_KEY_PACKAGE))),
            seq(der_oid(OID_MESSAGE_DIGEST), tlv(0x31, tlv(0x04, hashlib.new(digest_name, package).digest()))),
        ]
    )
    to_sign = tlv(0x31, b"".join(attrs))
    key = signer.key
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(to_sign, padding.PKCS1v15(), _HASHES[digest_name]())
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": f"{digest_name}_rsa", "parameters": None}).dump()
    else:
        signature = key.sign(to_sign, ec.ECDSA(_HASHES[digest_name]()))
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": f"{digest_name}_ecdsa"}).dump()
    cert = signer.certificate
    digest_alg = algos.DigestAlgorithm({"algorithm": digest_name}).dump()
    signer_info = seq(
        der_int(1),
        seq(cert.issuer.public_bytes(), der_int(cert.serial_number)),
        digest_alg,
        tlv(0xA0, b"".join(attrs)),
        sig_alg,
        tlv(0x04, signature),
    )
    return seq(
        der_int(3),
        tlv(0x31, digest_alg),
        seq(der_oid(OID_KEY_PACKAGE), tlv(0xA0, tlv(0x04, package))),
        tlv(0xA0, cert.public_bytes(serialization.Encoding.DER)),
        tlv(0x31, signer_info),
    )


class _KeyPackage(core.SequenceOf):
    _child_spec = core.Any


def open_key(der: bytes, kek_bytes: bytes, key_id: bytes, signer_cert: x509.Certificate) -> OpenedKey:
    """Client side: the key in a key part, after checking it names ``key_id``, opens with the
    KEK and is signed by ``signer_cert`` (the KM's CA). A wrong code is SignatureInvalid."""
    what = "the key part"
    if len(der) > MAX_SIZE:
        raise errors.MalformedInput(f"{what}: larger than {MAX_SIZE} octets")
    with errors.malformed(what):
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != OID_ENVELOPED_DATA:
            raise errors.MalformedInput(f"{what}: not an EnvelopedData")
        env = info["content"]
        cek = _unwrap(env["recipient_infos"], kek_bytes, key_id)
        eci = env["encrypted_content_info"]
        if eci["content_type"].dotted != OID_SIGNED_DATA:
            raise errors.MalformedInput(f"{what}: the encrypted content is not a SignedData")
        alg = eci["content_encryption_algorithm"]
        if alg["algorithm"].native != "aes256_cbc":
            raise errors.UnsupportedAlgorithm(f"{what}: content encryption {alg['algorithm'].dotted}")
        iv = alg["parameters"].native
        ciphertext = eci["encrypted_content"].native
        if not isinstance(iv, bytes) or len(iv) != 16 or not isinstance(ciphertext, bytes) or len(ciphertext) % 16:
            raise errors.MalformedInput(f"{what}: a bad IV or ciphertext length")
        dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        unpadder = sympadding.PKCS7(128).unpadder()
        inner = unpadder.update(dec.update(ciphertext) + dec.finalize()) + unpadder.finalize()
        package = _verified_package(inner, signer_cert)
        keys = _KeyPackage.load(package, strict=True)
        if len(keys) != 1:
            raise errors.MalformedInput(f"{what}: {len(keys)} keys in the package (one expected)")
        pkcs8 = keys[0].dump()
        try:
            private = serialization.load_der_private_key(pkcs8, None)
        except (ValueError, TypeError):
            raise errors.MalformedInput(f"{what}: the key does not parse") from None
        if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise errors.UnsupportedAlgorithm(f"{what}: a {type(private).__name__}")
        return OpenedKey(private, pkcs8)


def _unwrap(infos: cms.RecipientInfos, kek_bytes: bytes, key_id: bytes) -> bytes:
    if len(infos) != 1 or infos[0].name != "kekri":
        raise errors.MalformedInput("the key part: not one KEKRecipientInfo")
    kekri = infos[0].chosen
    if kekri["version"].native != "v4" or kekri["kekid"]["key_identifier"].native != key_id:
        raise errors.MalformedInput("the key part: it does not name this request's DecryptKeyIdentifier")
    if kekri["key_encryption_algorithm"]["algorithm"].native != "aes256_wrap":
        raise errors.UnsupportedAlgorithm("the key part: a key wrap other than AES-256")
    try:
        return keywrap.aes_key_unwrap(kek_bytes, kekri["encrypted_key"].native)
    except keywrap.InvalidUnwrap:
        raise errors.SignatureInvalid("the key part does not open with this code") from None


def _verified_package(inner: bytes, signer_cert: x509.Certificate) -> bytes:
    sd = cms.SignedData.load(inner, strict=True)
    encap = sd["encap_content_info"]
    if encap["content_type"].dotted != OID_KEY_PACKAGE:
        raise errors.MalformedInput("the key part: the signed content is not an asymmetric key package")
    package = encap["content"].native
    if not isinstance(package, bytes):
        raise errors.MalformedInput("the key part: no signed content")
    if len(sd["signer_infos"]) != 1:
        raise errors.MalformedInput("the key part: not one signer")
    si = sd["signer_infos"][0]
    sid = si["sid"]
    if (
        sid.name != "issuer_and_serial_number"
        or sid.chosen["serial_number"].native != signer_cert.serial_number
        or sid.chosen["issuer"].dump() != signer_cert.issuer.public_bytes()
    ):
        raise errors.SignatureInvalid("the key part is not signed by the KM")
    digest_name = si["digest_algorithm"]["algorithm"].native
    if digest_name not in _HASHES:
        raise errors.UnsupportedAlgorithm(f"the key part: digest {digest_name}")
    signed = si["signed_attrs"]
    values: dict[str, bytes] = {}
    for attr in signed:
        oid = attr["type"].dotted
        if oid in values or len(attr["values"]) != 1:
            raise errors.MalformedInput("the key part: a repeated or multi-valued signed attribute")
        values[oid] = attr["values"][0].dump()
    if values.get(OID_CONTENT_TYPE) != der_oid(OID_KEY_PACKAGE):
        raise errors.SignatureInvalid("the key part: the signed content type does not match")
    if values.get(OID_MESSAGE_DIGEST) != tlv(0x04, hashlib.new(digest_name, package).digest()):
        raise errors.SignatureInvalid("the key part: the message digest does not match")
    to_sign = b"\x31" + signed.dump()[1:]  # signed as an explicit SET OF (RFC 5652 §5.4)
    signature = si["signature"].native
    sig_alg = si["signature_algorithm"]["algorithm"].native
    public = signer_cert.public_key()
    hash_alg = _HASHES[digest_name]()
    try:
        if isinstance(public, rsa.RSAPublicKey) and sig_alg in (f"{digest_name}_rsa", "rsassa_pkcs1v15"):
            public.verify(signature, to_sign, padding.PKCS1v15(), hash_alg)
        elif isinstance(public, ec.EllipticCurvePublicKey) and sig_alg == f"{digest_name}_ecdsa":
            public.verify(signature, to_sign, ec.ECDSA(hash_alg))
        else:
            raise errors.UnsupportedAlgorithm(f"the key part: signature {sig_alg} for this signer")
    except InvalidSignature:
        raise errors.SignatureInvalid("the key part's signature does not verify") from None
    return package
