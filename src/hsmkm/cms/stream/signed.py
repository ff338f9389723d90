"""Streaming S/MIME signing and verification: the content is hashed as it passes, in bounded
memory; a verified content is renamed into place only once the signature and the signer
check out."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from asn1crypto import cms
from cryptography import x509

from hsmkm import errors
from hsmkm.atomic import atomic_writer, write_atomic
from hsmkm.cms import ber, protect, signed, smime
from hsmkm.cms.stream.mime import (
    CHUNK,
    Base64Reader,
    Base64Writer,
    Canonicalizer,
    HeadFilter,
    HeadFiltered,
    Prefixed,
    split_message,
)
from hsmkm.cms.validation import ValidationContext
from hsmkm.der import der_oid, tlv
from hsmkm.der import seq as der_seq
from hsmkm.keys.algorithms import Digest, digest_for_key
from hsmkm.keys.base import KeyEntry

_OID_SIGNED_DATA = der_oid("1.2.840.113549.1.7.2")
_OID_DATA = der_oid("1.2.840.113549.1.7.1")


def sign_stream(
    src: BinaryIO,
    out: BinaryIO,
    signer: KeyEntry,
    extra_certs: list[x509.Certificate],
    detached: bool,
    now: datetime,
    encryption_cert: x509.Certificate | None = None,
    capabilities: bytes | None = None,
) -> None:
    """Sign a message of any size: hashed and written as it is read, the signature last; the
    header fields protected (RFC 9788, hp="clear"). ``encryption_cert`` (also to be among
    ``extra_certs``) is named for replies, ``capabilities`` says what the signer reads."""
    head = src.read(64 << 10)
    outer, entity_head, body_start, entity_tail = split_message(head, protect.HpMode.CLEAR)
    digest = digest_for_key(signer.key)
    h = hashlib.new(digest.value)
    canon = Canonicalizer()

    def entity() -> Iterator[bytes]:
        yield entity_head
        yield canon(head[body_start:])
        while chunk := src.read(CHUNK):
            yield canon(chunk)
        yield entity_tail

    if detached:
        boundary = "----hsmkm-" + os.urandom(12).hex()
        out.write(smime.multipart_signed_head(digest.micalg, outer, boundary))
        for piece in entity():
            h.update(piece)
            out.write(piece)
        si = signed.signer_info(h.digest(), signer, now, encryption_cert, capabilities)
        der = _signed_data_der(digest, None, signed.certificates_der(signer, extra_certs), si.dump())
        out.write(smime.multipart_signed_tail(der, boundary))
        return
    out.write(smime.pkcs7_mime_head(smime.SmimeType.SIGNED_DATA, outer))
    b64 = Base64Writer(out)
    b64.write(
        ber.header(0x30, ber.INDEFINITE)
        + _OID_SIGNED_DATA
        + ber.header(0xA0, ber.INDEFINITE)
        + ber.header(0x30, ber.INDEFINITE)
        + b"\x02\x01\x01"
        + tlv(0x31, digest.algorithm_identifier)
        + ber.header(0x30, ber.INDEFINITE)
        + _OID_DATA
        + ber.header(0xA0, ber.INDEFINITE)
        + ber.header(0x24, ber.INDEFINITE)
    )
    for piece in entity():
        if piece:
            h.update(piece)
            b64.write(ber.header(0x04, len(piece)) + piece)
    si = signed.signer_info(h.digest(), signer, now, encryption_cert, capabilities)
    b64.write(ber.EOC * 3 + signed.certificates_der(signer, extra_certs) + tlv(0x31, si.dump()) + ber.EOC * 3)
    b64.close()


def _signed_data_der(digest: Digest, content: bytes | None, certs: bytes, signer_infos: bytes) -> bytes:
    encap = der_seq(_OID_DATA, b"" if content is None else tlv(0xA0, tlv(0x04, content)))
    sd = der_seq(b"\x02\x01\x01", tlv(0x31, digest.algorithm_identifier), encap, certs, tlv(0x31, signer_infos))
    return der_seq(_OID_SIGNED_DATA, tlv(0xA0, sd))


MAX_CLEAR_SIGNED = 64 << 20  # a multipart/signed message is read whole; an opaque one streams


def _check_signed(oid: bytes) -> None:
    if oid != _OID_SIGNED_DATA:
        raise errors.MalformedInput("not a signed message")


def verify_stream(
    src: BinaryIO,
    out_path: Path | None,
    ctx: ValidationContext,
    head_filter: HeadFilter | None = None,
    check: Callable[[signed.VerifyResult], None] | None = None,
    outer_out: list[tuple[str, str]] | None = None,
) -> signed.VerifyResult:
    """Verify an opaque signed message of any size, writing its content to ``out_path`` only once
    the signature and the signer check out. A clear-signed (multipart/signed) message, at most
    MAX_CLEAR_SIGNED octets, is read into memory; anything else is refused from its headers.
    The result carries the outer header fields; ``head_filter`` rewrites the content's
    beginning as it is written (the outer fields are in ``outer_out`` by then) and ``check``
    may refuse the result before anything is written."""
    head = src.read(64 << 10)
    outer: list[tuple[str, str]] = []
    if head[:1] == b"\x30":
        cms_stream: BinaryIO = Prefixed(head, src)  # type: ignore[assignment]
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
        cms_stream = Base64Reader(src, head[split[1] :])  # type: ignore[assignment]
    if out_path is not None and out_path.is_dir():
        raise errors.BadInput(f"{out_path} is a directory")
    reader = ber.Reader(cms_stream)
    with contextlib.ExitStack() as stack:
        # The content goes to a temporary file renamed into place when the block ends cleanly,
        # after the signature and ``check``; without an output it is only hashed.
        raw_fh: BinaryIO = (
            stack.enter_context(atomic_writer(out_path, 0o600))
            if out_path is not None
            else stack.enter_context(open(os.devnull, "wb"))
        )
        fh = HeadFiltered(raw_fh, head_filter)
        with errors.malformed("signed message"):
            frame = ber.open_content_info(reader, _check_signed, "a SignedData")
            sd, sd_start = frame.body, frame.body_start
            digest_der = reader.element()
            if digest_der[:1] != b"\x31":
                raise errors.MalformedInput("CMS: expected the digest algorithms")
            digest_set = cms.DigestAlgorithms.load(digest_der)
            names = [d["algorithm"].native for d in digest_set]
            known = (Digest.named(n) for n in names)
            hashers = {d: hashlib.new(d.value) for d in known if d is not None}
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
            if nxt.length != ber.INDEFINITE and (
                inner.length == ber.INDEFINITE or reader.pos + inner.length > explicit_start + nxt.length
            ):
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
            frame.close(reader)
            reader.at_end()
            fh.finish()
            si_set = cms.SignerInfos.load(signer_infos)
            if not len(si_set):
                raise errors.MalformedInput("no signer in the message")
            digest_name = si_set[0]["digest_algorithm"]["algorithm"].native
        digest = Digest.named(digest_name)
        if digest is None or digest not in hashers:
            raise errors.UnsupportedAlgorithm(f"unsupported algorithm: digest {digest_name}")
        der = _signed_data_der(digest, None, certs, signer_infos[_header_len(signer_infos) :])
        result = signed.verify(der, None, ctx, content_digest=hashers[digest].digest())
        result.outer_headers = outer
        if check is not None:
            check(result)
        return result


def _header_len(element: bytes) -> int:
    n = element[1]
    return 2 if n < 0x80 else 2 + (n & 0x7F)
