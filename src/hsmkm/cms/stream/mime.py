"""MIME I/O for streaming S/MIME: base64 in 76-character lines out and decoded as read, LF to
CRLF, a message's header split off its body, and the CMS bytes under a message's headers."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable
from typing import BinaryIO

from hsmkm import errors
from hsmkm.cms import mimefields, protect, smime

CHUNK = 1 << 20


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


def split_message(
    head: bytes,
    mode: protect.HpMode,
    policy: protect.Confidentiality = protect.Confidentiality.BASELINE,
    legacy_display: bool = False,
) -> tuple[list[tuple[str, str]], bytes, int, bytes]:
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
        return Prefixed(head, src)  # type: ignore[return-value]
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


class HeadFiltered:
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


class Prefixed:
    """``head`` (already read), then the rest of the stream."""

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
