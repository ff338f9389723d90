"""Streaming S/MIME encryption and decryption in bounded memory.

Encryption writes indefinite-length BER, base64-encoded line by line into the MIME body.
Decryption reads base64 and BER incrementally and writes the plaintext through an atomic
writer, renamed into place only after an AuthEnvelopedData tag has checked, so no
unauthenticated plaintext is ever left where the output was asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from asn1crypto import algos, cms
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmkm import errors
from hsmkm.atomic import atomic_writer
from hsmkm.cms import ber, enveloped, protect, smime
from hsmkm.cms.stream.mime import (
    CHUNK,
    Base64Writer,
    Canonicalizer,
    HeadFilter,
    HeadFiltered,
    open_cms_stream,
    split_message,
)
from hsmkm.keys.base import KeyEntry

OID_AUTH_ENVELOPED = "1.2.840.113549.1.9.16.1.23"
OID_ENVELOPED = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"


def _oid(dotted: str) -> bytes:
    return algos.EncryptionAlgorithmId(dotted).dump()


def encrypt_stream(
    src: BinaryIO,
    out: BinaryIO,
    recipients: list[x509.Certificate],
    cipher: enveloped.ContentCipher,
    transport: enveloped.KeyTransport | Sequence[enveloped.KeyTransport],
    policy: protect.Confidentiality = protect.Confidentiality.BASELINE,
    legacy_display: bool = False,
) -> None:
    """Read a message from ``src``, write the S/MIME encrypted message to ``out``, its header
    fields protected (RFC 9788, hp="cipher") and exposed as ``policy`` allows."""
    head = src.read(64 << 10)
    outer, entity_head, body_start, entity_tail = split_message(head, protect.HpMode.CIPHER, policy, legacy_display)
    cek = os.urandom(32)
    boxes = enveloped.lock_boxes(recipients, cek, transport)
    infos = enveloped.recipient_infos(boxes)
    gcm = cipher is enveloped.ContentCipher.AES256_GCM
    if gcm:
        nonce = os.urandom(12)
        alg = algos.EncryptionAlgorithm(
            {"algorithm": "aes256_gcm", "parameters": enveloped.GcmParameters({"aes_nonce": nonce, "aes_icv_len": 16})}
        ).dump()
        enc = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        ctype, version = OID_AUTH_ENVELOPED, b"\x02\x01\x00"
        kind = smime.SmimeType.AUTH_ENVELOPED_DATA
    else:
        iv = os.urandom(16)
        alg = algos.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv}).dump()
        enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()  # type: ignore[assignment]
        # RFC 5652 §6.1: version 2 once any lock box is not a version-0 key transport one.
        ctype, version = OID_ENVELOPED, (b"\x02\x01\x02" if any(b[:1] != b"\x30" for b in boxes) else b"\x02\x01\x00")
        kind = smime.SmimeType.ENVELOPED_DATA
        padder = sympadding.PKCS7(128).padder()
    out.write(smime.pkcs7_mime_head(kind, outer))
    b64 = Base64Writer(out)
    b64.write(
        ber.header(0x30, ber.INDEFINITE)
        + _oid(ctype)
        + ber.header(0xA0, ber.INDEFINITE)
        + ber.header(0x30, ber.INDEFINITE)
        + version
        + infos
        + ber.header(0x30, ber.INDEFINITE)
        + _oid(OID_DATA)
        + alg
        + ber.header(0xA0, ber.INDEFINITE)
    )

    def emit(ct: bytes) -> None:
        if ct:
            b64.write(ber.header(0x04, len(ct)) + ct)

    canon = Canonicalizer()
    pieces = [entity_head, canon(head[body_start:])]
    for piece in pieces:
        emit(enc.update(piece if gcm else padder.update(piece)))
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        data = canon(chunk)
        emit(enc.update(data if gcm else padder.update(data)))
    if entity_tail:
        emit(enc.update(entity_tail if gcm else padder.update(entity_tail)))
    if gcm:
        emit(enc.finalize())
        b64.write(ber.EOC + ber.EOC + ber.header(0x04, 16) + enc.tag + ber.EOC + ber.EOC + ber.EOC)
    else:
        emit(enc.update(padder.finalize()) + enc.finalize())
        b64.write(ber.EOC * 5)
    b64.close()


def _check_enveloped(oid: bytes) -> None:
    if oid[:1] != b"\x06":
        raise errors.MalformedInput("not a CMS message")
    ctype = algos.EncryptionAlgorithmId.load(oid).dotted
    if ctype not in (OID_AUTH_ENVELOPED, OID_ENVELOPED):
        raise errors.MalformedInput(f"not an enveloped message (content type {ctype})")


def decrypt_stream(
    src: BinaryIO,
    out_path: Path,
    candidates: list[KeyEntry],
    mode: int = 0o600,
    outer: list[tuple[str, str]] | None = None,
    head_filter: HeadFilter | None = None,
) -> KeyEntry:
    """Decrypt into ``out_path`` (atomically, after the tag checks); returns the key used. The
    outer header fields go to ``outer``; ``head_filter`` rewrites the plaintext's beginning."""
    reader = ber.Reader(open_cms_stream(src, outer))
    with errors.malformed("CMS message"):
        frame = ber.open_content_info(reader, _check_enveloped, "an (Auth)EnvelopedData")
        gcm = algos.EncryptionAlgorithmId.load(frame.content_type).dotted == OID_AUTH_ENVELOPED
        body, body_start = frame.body, frame.body_start
        nxt = reader.header()
        if nxt.tag == 0xA0:  # originatorInfo
            reader.element(nxt)
            nxt = reader.header()
        if nxt.tag != 0x31:
            raise errors.MalformedInput("CMS: expected the recipient infos")
        infos = cms.RecipientInfos.load(reader.element(nxt))
        _ = len(infos)
        eci = reader.expect(0x30, "the encrypted content info")
        eci_start = reader.pos
        if reader.element()[:1] != b"\x06":
            raise errors.MalformedInput("CMS: expected a content type")
        alg = algos.EncryptionAlgorithm.load(reader.element())
        key_size, nonce, tag_size = enveloped.content_cipher(alg, gcm)
        enc_hdr = reader.header()
    cek, entry = enveloped._find_cek(infos, candidates)
    if len(cek) != key_size:
        raise errors.SignatureInvalid("the lock box does not hold a key for this cipher (wrong key or tampered)")
    if gcm:
        dec = Cipher(algorithms.AES(cek), modes.GCM(nonce)).decryptor()
    else:
        dec = Cipher(algorithms.AES(cek), modes.CBC(nonce)).decryptor()  # type: ignore[assignment]
        unpadder = sympadding.PKCS7(128).unpadder()
    if out_path.is_dir():
        raise errors.BadInput(f"{out_path} is a directory")
    with atomic_writer(out_path, mode) as raw_fh, errors.malformed("CMS message"):
        fh = HeadFiltered(raw_fh, head_filter)
        if enc_hdr.tag not in (0x80, 0xA0):
            raise errors.MalformedInput("CMS: no encrypted content")
        if enc_hdr.tag == 0x80:
            pieces = reader.octet_pieces(ber.Header(0x04, enc_hdr.length, enc_hdr.size))
        else:
            pieces = reader.octet_pieces(ber.Header(0x24, enc_hdr.length, enc_hdr.size))
        for piece in pieces:
            plain = dec.update(piece)
            fh.write(plain if gcm else unpadder.update(plain))
        reader.close(eci, eci_start)
        tag = b""
        rest = reader.next_in(body, body_start)
        if gcm:
            if rest is not None and rest.tag == 0xA1:
                raise errors.UnsupportedAlgorithm("unsupported algorithm: authenticated attributes")
            if rest is None or rest.tag != 0x04 or rest.length != tag_size:
                raise errors.MalformedInput("CMS: no authentication tag of the announced size")
            tag = reader.read_exact(rest.length)
            rest = reader.next_in(body, body_start)
        if rest is not None and rest.tag == (0xA2 if gcm else 0xA1):  # unprotected attributes: not for us
            reader.element(rest)
            rest = reader.next_in(body, body_start)
        if rest is not None:
            raise errors.MalformedInput("CMS: unexpected data at the end of the message")
        frame.close(reader)
        reader.at_end()
        if gcm:
            try:
                fh.write(dec.finalize_with_tag(tag))
            except (InvalidTag, ValueError):  # ValueError: a tag shorter than the decryptor's 16 octets
                raise errors.SignatureInvalid("authentication tag does not verify: the message was altered") from None
        else:
            try:
                fh.write(unpadder.update(dec.finalize()) + unpadder.finalize())
            except ValueError:
                raise errors.SignatureInvalid("the content does not decrypt (wrong key or tampered)") from None
        fh.finish()
    return entry
