"""CMS EnvelopedData (AES-256-CBC) and AuthEnvelopedData (AES-256-GCM, RFC 5083/5084):
one RecipientInfo — a lock box — per recipient: RSA-OAEP or RSA PKCS#1 v1.5 key transport,
or ECDH (RFC 5753, dhSinglePass-stdDH with the X9.63 KDF and AES key wrap).

Private keys are reached only through the key interface (``decrypt``, ``exchange``), so a
key on a token opens a lock box the same way as a key in an .epf.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import keywrap, serialization
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from hsmkm import errors, smimecaps
from hsmkm.certnames import label_of
from hsmkm.der import der_int, der_oid, seq, tlv
from hsmkm.keys.algorithms import (
    AES_CBC_OIDS,
    AES_GCM_OIDS,
    AES_WRAP_OIDS,
    EC_PUBLIC_KEY_OID,
    ECDH_KDF_DIGESTS,
    ECDH_STD_SCHEMES,
    MGF1_OID,
    RSA_ENCRYPTION_OID,
    RSA_OAEP_OID,
    Digest,
    digest_for_key,
)
from hsmkm.keys.base import KeyEntry

ContentCipher = smimecaps.Cipher  # the names the CMS layer has always used
KeyTransport = smimecaps.Transport


OID_AES256_WRAP = AES_WRAP_OIDS[32]
_WRAP_SIZES = {oid: size for size, oid in AES_WRAP_OIDS.items()}


class GcmParameters(core.Sequence):
    """RFC 5084 GCMParameters."""

    _fields = [("aes_nonce", core.OctetString), ("aes_icv_len", core.Integer, {"default": 12})]


class EccCmsSharedInfo(core.Sequence):
    """RFC 5753 ECC-CMS-SharedInfo."""

    _fields = [
        ("key_info", algos.EncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


@dataclass(frozen=True)
class Decrypted:
    content: bytes
    content_type: str
    recipient: KeyEntry
    authenticated: bool


def _issuer_and_serial(cert: x509.Certificate) -> bytes:
    return seq(cert.issuer.public_bytes(), der_int(cert.serial_number))


def _check_recipient(cert: x509.Certificate) -> None:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and not ku.key_encipherment:
        raise errors.ValidationFailed(f"{label_of(cert)}: certificate not for key encipherment")
    if isinstance(pub, ec.EllipticCurvePublicKey) and not ku.key_agreement:
        raise errors.ValidationFailed(f"{label_of(cert)}: certificate not for key agreement")


def _oaep(digest: Digest, mgf: Digest) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(mgf.hash()), algorithm=digest.hash(), label=None)


_OAEP_SHA256_ALG = seq(
    der_oid(RSA_OAEP_OID),
    seq(
        tlv(0xA0, Digest.SHA256.algorithm_identifier),
        tlv(0xA1, seq(der_oid(MGF1_OID), Digest.SHA256.algorithm_identifier)),
    ),
)
_RSA_PKCS1_ALG = seq(der_oid(RSA_ENCRYPTION_OID), b"\x05\x00")
_EC_PUBLIC_KEY_ALG = seq(der_oid(EC_PUBLIC_KEY_OID))


def _ktri(cert: x509.Certificate, pub: rsa.RSAPublicKey, cek: bytes, transport: KeyTransport) -> bytes:
    """KeyTransRecipientInfo, version 0, in DER (built directly: a thousand of these must be quick)."""
    if transport is KeyTransport.RSA_OAEP:
        alg, wrapped = _OAEP_SHA256_ALG, pub.encrypt(cek, _oaep(Digest.SHA256, Digest.SHA256))
    else:
        alg, wrapped = _RSA_PKCS1_ALG, pub.encrypt(cek, padding.PKCS1v15())
    return seq(b"\x02\x01\x00", _issuer_and_serial(cert), alg, tlv(0x04, wrapped))


def _shared_info(wrap_oid: str, ukm: bytes | None, size: int) -> bytes:
    info = {"key_info": {"algorithm": wrap_oid}, "supp_pub_info": (size * 8).to_bytes(4, "big")}
    if ukm:
        info["entity_u_info"] = ukm
    return EccCmsSharedInfo(info).dump()


def _kari(cert: x509.Certificate, pub: ec.EllipticCurvePublicKey, cek: bytes) -> bytes:
    """KeyAgreeRecipientInfo ([1], version 3) with an ephemeral originator key, in DER."""
    digest = digest_for_key(pub)
    scheme = ECDH_STD_SCHEMES[digest]
    eph = ec.generate_private_key(pub.curve)
    kek = X963KDF(digest.hash(), 32, _shared_info(OID_AES256_WRAP, None, 32)).derive(eph.exchange(ec.ECDH(), pub))
    point = eph.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    originator = tlv(0xA0, tlv(0xA1, _EC_PUBLIC_KEY_ALG + tlv(0x03, b"\x00" + point)))
    alg = seq(der_oid(scheme), seq(der_oid(OID_AES256_WRAP)))
    keys = seq(seq(_issuer_and_serial(cert), tlv(0x04, keywrap.aes_key_wrap(kek, cek))))
    return tlv(0xA1, b"\x02\x01\x03" + originator + alg + keys)


def lock_boxes(
    recipients: list[x509.Certificate], cek: bytes, transport: KeyTransport | Sequence[KeyTransport]
) -> list[bytes]:
    """One RecipientInfo (DER) per recipient certificate; the key transport for all RSA
    recipients or one per recipient (RFC 8551 §2.7: what each one reads)."""
    out = []
    transports = [transport] * len(recipients) if isinstance(transport, KeyTransport) else list(transport)
    if len(transports) != len(recipients):
        raise errors.BadInput("one key transport per recipient")
    for cert, transport in zip(recipients, transports, strict=True):
        _check_recipient(cert)
        pub = cert.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            out.append(_ktri(cert, pub, cek, transport))
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            out.append(_kari(cert, pub, cek))
        else:
            raise errors.UnsupportedAlgorithm(f"{label_of(cert)}: recipient key type not supported")
    return out


def recipient_infos(boxes: list[bytes]) -> bytes:
    """The RecipientInfos SET (DER sorts a SET OF by encoding)."""
    return tlv(0x31, b"".join(sorted(boxes)))


def encrypt(
    content: bytes,
    recipients: list[x509.Certificate],
    cipher: ContentCipher = ContentCipher.AES256_GCM,
    transport: KeyTransport | Sequence[KeyTransport] = KeyTransport.RSA_OAEP,
) -> bytes:
    """A DER ContentInfo with the content encrypted to every recipient."""
    if not recipients:
        raise errors.BadInput("no recipients")
    cek = os.urandom(32)
    boxes = lock_boxes(recipients, cek, transport)
    infos = cms.RecipientInfos.load(recipient_infos(boxes))
    if cipher is ContentCipher.AES256_GCM:
        nonce = os.urandom(12)
        enc = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        ct = enc.update(content) + enc.finalize()
        params = GcmParameters({"aes_nonce": nonce, "aes_icv_len": 16})
        body = cms.AuthEnvelopedData(
            {
                "version": "v0",
                "recipient_infos": infos,
                "auth_encrypted_content_info": {
                    "content_type": "data",
                    "content_encryption_algorithm": {"algorithm": "aes256_gcm", "parameters": params},
                    "encrypted_content": ct,
                },
                "mac": enc.tag,
            }
        )
        return cms.ContentInfo({"content_type": "1.2.840.113549.1.9.16.1.23", "content": body}).dump()
    iv = os.urandom(16)
    padder = sympadding.PKCS7(128).padder()
    cbc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ct = cbc.update(padder.update(content) + padder.finalize()) + cbc.finalize()
    version = "v2" if any(b[:1] != b"\x30" for b in boxes) else "v0"
    enveloped = cms.EnvelopedData(
        {
            "version": version,
            "recipient_infos": infos,
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": ct,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


# --- decryption ------------------------------------------------------------------------------


def _rid_matches(rid: core.Choice, cert: x509.Certificate) -> bool:
    if rid.name == "issuer_and_serial_number":
        value = rid.chosen
        return bool(
            value["serial_number"].native == cert.serial_number and value["issuer"].dump() == cert.issuer.public_bytes()
        )
    if rid.name in ("subject_key_identifier", "r_key_id"):
        ski = rid.chosen.native if rid.name == "subject_key_identifier" else rid.chosen["subject_key_identifier"].native
        try:
            mine = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            mine = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type,unused-ignore]
        return bool(ski == mine)
    return False


def _open_ktri(info: cms.KeyTransRecipientInfo, entry: KeyEntry) -> bytes:
    key = entry.key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise errors.UnsupportedAlgorithm("unsupported algorithm: RSA lock box for a key that is not RSA")
    alg = info["key_encryption_algorithm"]
    name = alg["algorithm"].native
    if name == "rsaes_oaep":
        params = alg["parameters"]
        h = Digest.named(params["hash_algorithm"]["algorithm"].native)
        mgf = params["mask_gen_algorithm"]
        m = Digest.named(mgf["parameters"]["algorithm"].native) if mgf["algorithm"].native == "mgf1" else None
        if h is None or m is None or params["p_source_algorithm"]["parameters"].native not in (b"", None):
            raise errors.UnsupportedAlgorithm("RSA-OAEP parameters not supported")
        return key.decrypt(info["encrypted_key"].native, _oaep(h, m))
    if name in ("rsa", "rsaes_pkcs1v15"):
        return key.decrypt(info["encrypted_key"].native, padding.PKCS1v15())
    raise errors.UnsupportedAlgorithm(f"key transport {name}")


def _open_kari(info: cms.KeyAgreeRecipientInfo, encrypted_key: bytes, entry: KeyEntry) -> bytes:
    key = entry.key
    alg = info["key_encryption_algorithm"]
    scheme = alg["algorithm"].dotted
    kdf_digest = ECDH_KDF_DIGESTS.get(scheme)
    if kdf_digest is None:
        raise errors.UnsupportedAlgorithm(
            f"unsupported algorithm: key agreement {scheme} (X25519/HKDF is not supported)"
        )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.UnsupportedAlgorithm("unsupported algorithm: ECDH lock box for a key that is not NIST EC")
    wrap = algos.EncryptionAlgorithm.load(alg["parameters"].dump())
    wrap_oid = wrap["algorithm"].dotted
    size = _WRAP_SIZES.get(wrap_oid)
    if size is None:
        raise errors.UnsupportedAlgorithm(f"key wrap {wrap_oid}")
    originator = info["originator"]
    if originator.name != "originator_key":
        raise errors.UnsupportedAlgorithm("static-static ECDH originators are not supported")
    point = originator.chosen["public_key"].native
    peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
    ukm = info["ukm"].native if info["ukm"].native else None
    kek = X963KDF(kdf_digest.hash(), size, _shared_info(wrap_oid, ukm, size)).derive(key.exchange(ec.ECDH(), peer))
    try:
        return keywrap.aes_key_unwrap(kek, encrypted_key)
    except keywrap.InvalidUnwrap:
        raise errors.SignatureInvalid("the lock box does not open (wrong key or tampered)") from None


def _find_cek(infos: cms.RecipientInfos, candidates: list[KeyEntry]) -> tuple[bytes, KeyEntry]:
    """The content-encryption key from the lock box addressed to one of ``candidates``."""
    try:
        return _open_lock_box(infos, candidates)
    except errors.HsmkmError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise errors.MalformedInput(f"malformed recipient info ({type(exc).__name__})") from None


def _open_lock_box(infos: cms.RecipientInfos, candidates: list[KeyEntry]) -> tuple[bytes, KeyEntry]:
    for info in infos:
        if info.name == "ktri":
            for entry in candidates:
                if _rid_matches(info.chosen["rid"], entry.certificate):
                    try:
                        return _open_ktri(info.chosen, entry), entry
                    except ValueError:
                        raise errors.SignatureInvalid("the lock box does not open (wrong key or tampered)") from None
        elif info.name == "kari":
            for rek in info.chosen["recipient_encrypted_keys"]:
                for entry in candidates:
                    if _rid_matches(rek["rid"], entry.certificate):
                        return _open_kari(info.chosen, rek["encrypted_key"].native, entry), entry
    kinds = {info.name for info in infos}
    if kinds & {"kekri", "pwri", "ori"} and not kinds & {"ktri", "kari"}:
        raise errors.UnsupportedAlgorithm(f"unsupported algorithm: recipient info {', '.join(sorted(kinds))}")
    raise errors.NotFound("the message is not addressed to any of this keystore's keys")


_GCM_KEY_SIZES = {oid: size for size, oid in AES_GCM_OIDS.items()}
_CBC_KEY_SIZES = {oid: size for size, oid in AES_CBC_OIDS.items()}
GCM_NONCE_SIZE = 12  # RFC 5084 §3.2; what every S/MIME implementation sends
GCM_TAG_SIZES = range(12, 17)  # RFC 5084 §3.2: aes-ICVlen is 12 to 16
CBC_IV_SIZE = 16


def content_cipher(alg: algos.EncryptionAlgorithm, gcm: bool) -> tuple[int, bytes, int]:
    """(key size, nonce or IV, tag size) of the content-encryption algorithm, checked."""
    name = alg["algorithm"].dotted
    sizes = _GCM_KEY_SIZES if gcm else _CBC_KEY_SIZES
    if name not in sizes:
        raise errors.UnsupportedAlgorithm(f"unsupported algorithm: content encryption {alg['algorithm'].native}")
    if gcm:
        params = GcmParameters.load(alg["parameters"].dump())
        nonce, tag_size = params["aes_nonce"].native, params["aes_icv_len"].native
        if not isinstance(nonce, bytes) or len(nonce) != GCM_NONCE_SIZE:
            raise errors.MalformedInput(f"CMS: a GCM nonce must be {GCM_NONCE_SIZE} octets")
        if tag_size not in GCM_TAG_SIZES:
            raise errors.MalformedInput("CMS: a GCM tag must be 12 to 16 octets")
        return sizes[name], nonce, tag_size
    iv = alg["parameters"].native
    if not isinstance(iv, bytes) or len(iv) != CBC_IV_SIZE:
        raise errors.MalformedInput(f"CMS: a CBC IV must be {CBC_IV_SIZE} octets")
    return sizes[name], iv, 0


def decrypt(der: bytes, candidates: list[KeyEntry]) -> Decrypted:
    """Open the lock box addressed to one of ``candidates``, then the content."""
    with errors.malformed("CMS message"):
        info = cms.ContentInfo.load(der, strict=True)
        ctype = info["content_type"].dotted
        body = info["content"]
        if ctype == "1.2.840.113549.1.9.16.1.23":
            body = cms.AuthEnvelopedData.load(body.contents) if not isinstance(body, cms.AuthEnvelopedData) else body
            infos = body["recipient_infos"]
            eci = body["auth_encrypted_content_info"]
        elif ctype == "1.2.840.113549.1.7.3":
            infos = body["recipient_infos"]
            eci = body["encrypted_content_info"]
        else:
            raise errors.MalformedInput(f"not an enveloped message (content type {ctype})")
        gcm = ctype == "1.2.840.113549.1.9.16.1.23"
        alg = eci["content_encryption_algorithm"]
        key_size, nonce, tag_size = content_cipher(alg, gcm)
        ct = eci["encrypted_content"].native or b""
        inner_type = eci["content_type"].native
        _ = len(infos)
        tag = body["mac"].native if gcm else b""
        aad = b""
        if gcm and body["auth_attrs"].native:
            aad = body["auth_attrs"].untag().retag("universal", 17).dump()
        if not isinstance(ct, bytes) or not isinstance(tag, bytes):
            raise errors.MalformedInput("CMS: the encrypted content is not an OCTET STRING")
    cek, entry = _find_cek(infos, candidates)
    if len(cek) != key_size:
        raise errors.SignatureInvalid("the lock box does not hold a key for this cipher (wrong key or tampered)")
    try:
        if gcm:
            if len(tag) != tag_size:
                raise errors.SignatureInvalid("GCM parameters do not match")
            dec = Cipher(algorithms.AES(cek), modes.GCM(nonce, tag, min_tag_length=12)).decryptor()
            if aad:
                dec.authenticate_additional_data(aad)
            plain = dec.update(ct) + dec.finalize()
            return Decrypted(plain, inner_type, entry, True)
        if len(ct) % 16:
            raise errors.SignatureInvalid("the content does not decrypt (wrong key or tampered)")
        cbc = Cipher(algorithms.AES(cek), modes.CBC(nonce)).decryptor()
        unpadder = sympadding.PKCS7(128).unpadder()
        plain = unpadder.update(cbc.update(ct) + cbc.finalize()) + unpadder.finalize()
        return Decrypted(plain, inner_type, entry, False)
    except errors.HsmkmError:
        raise
    except ValueError:
        raise errors.SignatureInvalid("the content does not decrypt (wrong key or tampered)") from None
    except InvalidTag:
        raise errors.SignatureInvalid("authentication tag does not verify: the message was altered") from None
