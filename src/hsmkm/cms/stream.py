"""Streaming S/MIME encryption and decryption in bounded memory.

Encryption writes indefinite-length BER, base64-encoded line by line into the MIME body.
Decryption reads base64 and BER incrementally, writes the plaintext to a temporary file and
renames it into place only after an AuthEnvelopedData tag has checked, so no unauthenticated
plaintext is ever left where the output was asked for.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import struct
import tempfile
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from asn1crypto import algos, cms
from cryptography import x509
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmkm import errors
from hsmkm.atomic import write_atomic
from hsmkm.cms import ber, enveloped, mimefields, protect, signed, smime
from hsmkm.cms.validation import ValidationContext
from hsmkm.der import der_oid, seq as der_seq, tlv
from hsmkm.keys.base import KeyEntry

CHUNK = 1 << 20
OID_AUTH_ENVELOPED = "1.2.840.113549.1.9.16.1.23"
OID_ENVELOPED = "1.2.840.113549.1.7.3"


def _oid(dotted: str) -> bytes:
    return algos.EncryptionAlgorithmId(dotted).dump()


class Base64Writer:
    """Base64 in 76-character lines, CRLF-terminated, written as it comes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pending = b""
        self._cutters: dict[int, struct.Struct] = {}

    def write(self, data: bytes) -> None:
        data = self.pending + data
        lines = len(data) // 57
        if lines:
            self.out.write(self._encode_lines(data[: lines * 57], lines))
        self.pending = data[lines * 57 :]

    def _encode_lines(self, data: bytes, lines: int) -> bytes:
        # The whole block is encoded at once and cut into 76-character lines by a struct of
        # that many fields, both in C: base64.encodebytes loops in Python over 57-byte pieces,
        # which took more time than the encryption itself.
        cutter = self._cutters.get(lines)
        if cutter is None:
            if len(self._cutters) >= 4:
                self._cutters.clear()
            cutter = self._cutters[lines] = struct.Struct("76s" * lines)
        return b"\r\n".join(cutter.unpack(binascii.b2a_base64(data, newline=False))) + b"\r\n"

    def close(self) -> None:
        if self.pending:
            self.out.write(base64.encodebytes(self.pending).replace(b"\n", b"\r\n"))
            self.pending = b""


_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on


class Base64Reader:
    """A binary stream over base64 text, decoded as it is read."""

    def __init__(self, src: BinaryIO, head: bytes = b"") -> None:
        self.src = src
        self.text = head
        self.buf = b""
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buf) < n) and not self.eof:
            more = self.src.read(CHUNK)
            if not more:
                self.eof = True
            text = (self.text + more).translate(None, _WHITESPACE)
            usable = len(text) if self.eof else len(text) - len(text) % 4
            try:
                self.buf += binascii.a2b_base64(text[:usable], strict_mode=True) if usable else b""
            except binascii.Error:
                raise errors.MalformedInput("the S/MIME part is not valid base64") from None
            self.text = text[usable:]
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


class Canonicalizer:
    """LF to CRLF over a stream (RFC 8551 §3.1.1), a CRLF split across chunks included."""

    def __init__(self) -> None:
        self.after_cr = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        lead = b""
        if self.after_cr and chunk[:1] == b"\n":
            lead, chunk = b"\n", chunk[1:]
        self.after_cr = chunk[-1:] == b"\r"
        return lead + chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


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
    outer, entity_head, body_start, entity_tail = _split_message(head, protect.HpMode.CIPHER, policy, legacy_display)
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
        ber.header(0x30, ber.INDEFINITE) + _oid(ctype) + ber.header(0xA0, ber.INDEFINITE)
        + ber.header(0x30, ber.INDEFINITE) + version + infos
        + ber.header(0x30, ber.INDEFINITE) + _oid("1.2.840.113549.1.7.1") + alg + ber.header(0xA0, ber.INDEFINITE)
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


def _split_message(head: bytes, mode: protect.HpMode, policy: protect.Confidentiality = protect.Confidentiality.BASELINE,
                   legacy_display: bool = False) -> tuple[list[tuple[str, str]], bytes, int, bytes]:
    """Outer headers, the Cryptographic Payload up to the body, where the body starts in
    ``head``, and what follows the body."""
    m = re.search(rb"\r?\n\r?\n", head)
    split = mimefields.split_fields(head[: m.end()]) if m else None
    if split is None or m is None:
        p = protect.protect_head(None, mode)
        return p.outer, p.prefix, 0, p.suffix
    p = protect.protect_head(split[0], mode, policy, legacy_display)
    return p.outer, p.prefix, m.end(), p.suffix


def open_cms_stream(src: BinaryIO, outer: list[tuple[str, str]] | None = None) -> BinaryIO:
    """The CMS bytes of a message: bare DER/BER as is, base64 under S/MIME headers decoded;
    the message's outer (non-MIME) header fields are appended to ``outer``."""
    head = src.read(64 << 10)
    if head[:1] == b"\x30":
        return _Prefixed(head, src)  # type: ignore[return-value]
    split = smime.split_head(head)
    if split is None:
        raise errors.MalformedInput("not an S/MIME message or DER")
    headers, body_start = split
    ctype = (smime.header_value(headers, "Content-Type") or "").lower()
    if not ctype.startswith(("application/pkcs7-mime", "application/x-pkcs7-mime")):
        raise errors.MalformedInput(f"not an encrypted S/MIME message (Content-Type {ctype or 'missing'})")
    if outer is not None:
        outer += smime.outer_of(headers)
    return Base64Reader(src, head[body_start:])  # type: ignore[return-value]


HeadFilter = Callable[[bytes], bytes]


class _HeadFiltered:
    """A writer that hands the first ``limit`` octets (or all, if fewer) to a filter once."""

    def __init__(self, fh: BinaryIO, head_filter: HeadFilter | None, limit: int = 64 << 10) -> None:
        self.fh, self.filter, self.limit, self.buf = fh, head_filter, limit, b""

    def write(self, data: bytes) -> None:
        if self.filter is None:
            self.fh.write(data)
            return
        self.buf += data
        if len(self.buf) >= self.limit:
            self.finish()

    def finish(self) -> None:
        if self.filter is not None:
            head_filter, self.filter = self.filter, None
            self.fh.write(head_filter(self.buf))
            self.buf = b""


class _Prefixed:
    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0 or n >= len(self.head):
                out, self.head = self.head, b""
                more = self.rest.read(-1 if n < 0 else n - len(out))
                return out + more
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.rest.read(n)


def decrypt_stream(src: BinaryIO, out_path: Path, candidates: list[KeyEntry], mode: int = 0o600,
                   outer: list[tuple[str, str]] | None = None, head_filter: HeadFilter | None = None) -> KeyEntry:
    """Decrypt into ``out_path`` (atomically, after the tag checks); returns the key used. The
    outer header fields go to ``outer``; ``head_filter`` rewrites the plaintext's beginning."""
    reader = ber.Reader(open_cms_stream(src, outer))
    with errors.malformed("CMS message"):
        ci = reader.expect(0x30, "a CMS ContentInfo")
        ci_start = reader.pos
        oid = reader.element()
        if oid[:1] != b"\x06":
            raise errors.MalformedInput("not a CMS message")
        ctype = algos.EncryptionAlgorithmId.load(oid).dotted
        if ctype not in (OID_AUTH_ENVELOPED, OID_ENVELOPED):
            raise errors.MalformedInput(f"not an enveloped message (content type {ctype})")
        gcm = ctype == OID_AUTH_ENVELOPED
        wrap = reader.expect(0xA0, "the [0] content")
        wrap_start = reader.pos
        body = reader.expect(0x30, "an (Auth)EnvelopedData")
        body_start = reader.pos
        if reader.element()[:1] != b"\x02":
            raise errors.MalformedInput("CMS: expected a version")
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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as raw_fh, errors.malformed("CMS message"):
            fh = _HeadFiltered(raw_fh, head_filter)
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
            reader.close(wrap, wrap_start)
            reader.close(ci, ci_start)
            reader.at_end()
            if gcm:
                try:
                    fh.write(dec.finalize_with_tag(tag))
                except Exception:
                    raise errors.SignatureInvalid("authentication tag does not verify: the message was altered") from None
            else:
                try:
                    fh.write(unpadder.update(dec.finalize()) + unpadder.finalize())
                except ValueError:
                    raise errors.SignatureInvalid("the content does not decrypt (wrong key or tampered)") from None
            fh.finish()
            raw_fh.flush()
            os.fsync(raw_fh.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return entry


def sign_stream(
    src: BinaryIO, out: BinaryIO, signer: KeyEntry, extra_certs: list[x509.Certificate], detached: bool, now: datetime,
    encryption_cert: x509.Certificate | None = None, capabilities: bytes | None = None,
) -> None:
    """Sign a message of any size: hashed and written as it is read, the signature last; the
    header fields protected (RFC 9788, hp="clear"). ``encryption_cert`` (also to be among
    ``extra_certs``) is named for replies, ``capabilities`` says what the signer reads."""
    head = src.read(64 << 10)
    outer, entity_head, body_start, entity_tail = _split_message(head, protect.HpMode.CLEAR)
    digest_name = signed.digest_name_for(signer.key)
    h = hashlib.new(digest_name)
    canon = Canonicalizer()

    def entity() -> Iterator[bytes]:
        yield entity_head
        yield canon(head[body_start:])
        while chunk := src.read(CHUNK):
            yield canon(chunk)
        yield entity_tail

    if detached:
        boundary = "----hsmkm-" + os.urandom(12).hex()
        micalg = "sha-384" if digest_name == "sha384" else "sha-256"
        out.write(smime.multipart_signed_head(micalg, outer, boundary))
        for piece in entity():
            h.update(piece)
            out.write(piece)
        si = signed.signer_info(h.digest(), signer, now, encryption_cert, capabilities)
        der = _signed_data_der(digest_name, None, signed.certificates_der(signer, extra_certs), si.dump())
        out.write(smime.multipart_signed_tail(der, boundary))
        return
    out.write(smime.pkcs7_mime_head(smime.SmimeType.SIGNED_DATA, outer))
    b64 = Base64Writer(out)
    digest_alg = der_seq(der_oid(_DIGEST_OIDS[digest_name]))
    b64.write(
        ber.header(0x30, ber.INDEFINITE) + der_oid("1.2.840.113549.1.7.2") + ber.header(0xA0, ber.INDEFINITE)
        + ber.header(0x30, ber.INDEFINITE) + b"\x02\x01\x01" + tlv(0x31, digest_alg)
        + ber.header(0x30, ber.INDEFINITE) + der_oid("1.2.840.113549.1.7.1") + ber.header(0xA0, ber.INDEFINITE)
        + ber.header(0x24, ber.INDEFINITE)
    )
    for piece in entity():
        if piece:
            h.update(piece)
            b64.write(ber.header(0x04, len(piece)) + piece)
    si = signed.signer_info(h.digest(), signer, now, encryption_cert, capabilities)
    b64.write(ber.EOC * 3 + signed.certificates_der(signer, extra_certs) + tlv(0x31, si.dump()) + ber.EOC * 3)
    b64.close()


_DIGEST_OIDS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha1": "1.3.14.3.2.26",
}


def _signed_data_der(digest_name: str, content: bytes | None, certs: bytes, signer_infos: bytes) -> bytes:
    encap = der_seq(der_oid("1.2.840.113549.1.7.1"), b"" if content is None else tlv(0xA0, tlv(0x04, content)))
    sd = der_seq(b"\x02\x01\x01", tlv(0x31, der_seq(der_oid(_DIGEST_OIDS[digest_name]))), encap, certs,
                 tlv(0x31, signer_infos))
    return der_seq(der_oid("1.2.840.113549.1.7.2"), tlv(0xA0, sd))


MAX_CLEAR_SIGNED = 64 << 20  # a multipart/signed message is read whole; an opaque one streams
_OID_SIGNED_DATA = der_oid("1.2.840.113549.1.7.2")
_OID_DATA = der_oid("1.2.840.113549.1.7.1")


def verify_stream(src: BinaryIO, out_path: Path | None, ctx: ValidationContext, head_filter: HeadFilter | None = None,
                  check: Callable[[signed.VerifyResult], None] | None = None,
                  outer_out: list[tuple[str, str]] | None = None) -> signed.VerifyResult:
    """Verify an opaque signed message of any size, writing its content to ``out_path`` only once
    the signature and the signer check out. A clear-signed (multipart/signed) message, at most
    MAX_CLEAR_SIGNED octets, is read into memory; anything else is refused from its headers.
    The result carries the outer header fields; ``head_filter`` rewrites the content's
    beginning as it is written (the outer fields are in ``outer_out`` by then) and ``check``
    may refuse the result before anything is written."""
    head = src.read(64 << 10)
    outer: list[tuple[str, str]] = []
    if head[:1] == b"\x30":
        cms_stream: BinaryIO = _Prefixed(head, src)  # type: ignore[assignment]
    else:
        split = smime.split_head(head)
        if split is None:
            raise errors.MalformedInput("not an S/MIME message or DER")
        ctype = (smime.header_value(split[0], "Content-Type") or "").lower()
        if ctype.startswith("multipart/signed"):
            data = head + src.read(MAX_CLEAR_SIGNED + 1 - len(head))
            if len(data) > MAX_CLEAR_SIGNED:
                raise errors.MalformedInput(f"a clear-signed message over {MAX_CLEAR_SIGNED >> 20} MiB is refused")
            parsed = smime.parse(data)
            result = signed.verify(parsed.der, parsed.detached_content, ctx)
            result.outer_headers = parsed.outer_headers
            if outer_out is not None:
                outer_out += parsed.outer_headers
            content = head_filter(result.content) if head_filter else result.content
            if check is not None:
                check(result)
            if out_path is not None:
                write_atomic(out_path, content, 0o600)
            return result
        if not ctype.startswith(("application/pkcs7-mime", "application/x-pkcs7-mime")):
            raise errors.MalformedInput(f"not a signed S/MIME message (Content-Type {ctype or 'missing'})")
        outer = smime.outer_of(split[0])
        if outer_out is not None:
            outer_out += outer
        cms_stream = Base64Reader(src, head[split[1]:])  # type: ignore[assignment]
    if out_path is not None and out_path.is_dir():
        raise errors.BadInput(f"{out_path} is a directory")
    reader = ber.Reader(cms_stream)
    target = out_path or Path(os.devnull)
    fd, tmp = tempfile.mkstemp(prefix=".hsmkm-verify.", suffix=".tmp", dir=None if out_path is None else out_path.parent)
    try:
        with os.fdopen(fd, "wb") as raw_fh:
            fh = _HeadFiltered(raw_fh, head_filter)
            with errors.malformed("signed message"):
                ci = reader.expect(0x30, "a CMS ContentInfo")
                ci_start = reader.pos
                if reader.element() != _OID_SIGNED_DATA:
                    raise errors.MalformedInput("not a signed message")
                wrap = reader.expect(0xA0, "the [0] content")
                wrap_start = reader.pos
                sd = reader.expect(0x30, "a SignedData")
                sd_start = reader.pos
                if reader.element()[:1] != b"\x02":
                    raise errors.MalformedInput("CMS: expected a version")
                digest_der = reader.element()
                if digest_der[:1] != b"\x31":
                    raise errors.MalformedInput("CMS: expected the digest algorithms")
                digest_set = cms.DigestAlgorithms.load(digest_der)
                names = [d["algorithm"].native for d in digest_set]
                hashers = {n: hashlib.new(n) for n in names if n in _DIGEST_OIDS}
                encap = reader.expect(0x30, "the encapsulated content info")
                encap_start = reader.pos
                econtent_type = reader.element()
                if econtent_type != _OID_DATA:
                    raise errors.MalformedInput("the signed content is not data (id-data), which is all hsmkm verifies")
                nxt = reader.next_in(encap, encap_start)
                if nxt is None:
                    raise errors.MalformedInput("detached signature without its content")
                if nxt.tag != 0xA0:
                    raise errors.MalformedInput("CMS: expected the [0] content")
                explicit_start = reader.pos
                inner = reader.header()
                if inner.tag not in (0x04, 0x24):
                    raise errors.MalformedInput("CMS: the content is not an OCTET STRING")
                if nxt.length != ber.INDEFINITE and (inner.length == ber.INDEFINITE
                                                     or reader.pos + inner.length > explicit_start + nxt.length):
                    raise errors.MalformedInput("CMS: the content runs past its [0]")
                for piece in reader.octet_pieces(inner):
                    for hh in hashers.values():
                        hh.update(piece)
                    fh.write(piece)
                reader.close(nxt, explicit_start)
                if reader.next_in(encap, encap_start) is not None:
                    raise errors.MalformedInput("CMS: unexpected data after the content")
                nxt = reader.next_in(sd, sd_start)
                certs = b""
                if nxt is not None and nxt.tag == 0xA0:
                    certs = reader.element(nxt)
                    nxt = reader.next_in(sd, sd_start)
                if nxt is not None and nxt.tag == 0xA1:  # crls
                    reader.element(nxt)
                    nxt = reader.next_in(sd, sd_start)
                if nxt is None or nxt.tag != 0x31:
                    raise errors.MalformedInput("CMS: expected the signer infos")
                signer_infos = reader.element(nxt)
                if reader.next_in(sd, sd_start) is not None:
                    raise errors.MalformedInput("CMS: unexpected data after the signer infos")
                reader.close(wrap, wrap_start)
                reader.close(ci, ci_start)
                reader.at_end()
                fh.finish()
                raw_fh.flush()
                si_set = cms.SignerInfos.load(signer_infos)
                if not len(si_set):
                    raise errors.MalformedInput("no signer in the message")
                digest_name = si_set[0]["digest_algorithm"]["algorithm"].native
        if digest_name not in hashers:
            raise errors.UnsupportedAlgorithm(f"unsupported algorithm: digest {digest_name}")
        der = _signed_data_der(digest_name, None, certs, signer_infos[_header_len(signer_infos):])
        result = signed.verify(der, None, ctx, content_digest=hashers[digest_name].digest())
        result.outer_headers = outer
        if check is not None:
            check(result)
        if out_path is not None:
            os.replace(tmp, target)
        return result
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _header_len(element: bytes) -> int:
    n = element[1]
    return 2 if n < 0x80 else 2 + (n & 0x7F)
