"""A small incremental BER reader and the indefinite-length pieces the streaming writer needs.

Messages of any size pass through in chunks: the writer emits indefinite-length constructed
encodings (X.690 §8.1.3.6), the reader walks headers off a stream and yields the primitive
pieces of a constructed OCTET STRING without holding the whole value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from hsmkm import errors
from hsmkm.der import der_length

EOC = b"\x00\x00"
INDEFINITE = -1
MAX_DEPTH = 64  # nesting of indefinite-length elements; CMS needs about ten
MAX_ELEMENT = 64 << 20  # an element read whole (certificates, signer infos); content streams
_READ_CHUNK = 1 << 20


def header(tag: int, length: int) -> bytes:
    """Identifier and length octets; ``length`` INDEFINITE gives 0x80."""
    if length == INDEFINITE:
        return bytes([tag, 0x80])
    return bytes([tag]) + der_length(length)


@dataclass
class Header:
    tag: int
    length: int  # INDEFINITE for 0x80
    size: int  # octets of identifier and length

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


class Reader:
    """Reads BER from a binary stream, counting what it consumed."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.pos = 0

    def read_exact(self, n: int) -> bytes:
        """``n`` octets, read in bounded pieces so that a huge length meets the end of the input
        before it meets the memory's."""
        if n > MAX_ELEMENT:
            raise errors.MalformedInput(f"CMS: an element of {n} octets is too large")
        parts = []
        got = 0
        while got < n:
            more = self.fh.read(min(n - got, _READ_CHUNK))
            if not more:
                raise errors.MalformedInput("CMS: truncated input")
            parts.append(more)
            got += len(more)
        self.pos += n
        return b"".join(parts)

    def header(self) -> Header:
        first = self.read_exact(1)[0]
        if first & 0x1F == 0x1F:
            raise errors.MalformedInput("CMS: high tag numbers are not used here")
        n = self.read_exact(1)[0]
        if n < 0x80:
            return Header(first, n, 2)
        if n == 0x80:
            if not first & 0x20:
                raise errors.MalformedInput("CMS: indefinite length on a primitive value")
            return Header(first, INDEFINITE, 2)
        count = n & 0x7F
        if count > 8:
            raise errors.MalformedInput("CMS: length too long")
        return Header(first, int.from_bytes(self.read_exact(count), "big"), 2 + count)

    def element(self, hdr: Header | None = None, depth: int = 0) -> bytes:
        """One whole element (its header included), re-encoded with definite lengths."""
        hdr = hdr or self.header()
        if hdr.tag == 0 and hdr.length == 0:
            raise errors.MalformedInput("CMS: end-of-contents where an element was expected")
        if hdr.length != INDEFINITE:
            return header(hdr.tag, hdr.length) + self.read_exact(hdr.length)
        if depth >= MAX_DEPTH:
            raise errors.MalformedInput(f"CMS: nested deeper than {MAX_DEPTH} levels")
        parts = []
        size = 0
        while True:
            sub = self.header()
            if sub.tag == 0 and sub.length == 0:
                break
            part = self.element(sub, depth + 1)
            size += len(part)
            if size > MAX_ELEMENT:
                raise errors.MalformedInput(f"CMS: an element over {MAX_ELEMENT} octets is too large")
            parts.append(part)
        body = b"".join(parts)
        return header(hdr.tag, len(body)) + body

    def expect(self, tag: int, what: str) -> Header:
        """The next header, which must carry ``tag``."""
        hdr = self.header()
        if hdr.tag != tag:
            raise errors.MalformedInput(f"CMS: expected {what}")
        return hdr

    def end_of_contents(self) -> None:
        if self.read_exact(2) != EOC:
            raise errors.MalformedInput("CMS: expected end-of-contents")

    def close(self, hdr: Header, start: int) -> None:
        """The end of a constructed element whose header ``hdr`` ended at ``start``: its
        end-of-contents, or exactly its definite length consumed."""
        if hdr.length == INDEFINITE:
            self.end_of_contents()
        elif self.pos != start + hdr.length:
            raise errors.MalformedInput("CMS: an element's length does not match its contents")

    def next_in(self, hdr: Header, start: int) -> Header | None:
        """The next header inside the constructed element ``hdr`` (whose header ended at
        ``start``), or None at its end (its end-of-contents consumed)."""
        if hdr.length != INDEFINITE:
            end = start + hdr.length
            if self.pos > end:
                raise errors.MalformedInput("CMS: an element runs past the end of the one holding it")
            if self.pos == end:
                return None
            sub = self.header()
            if sub.length != INDEFINITE and self.pos + sub.length > end:
                raise errors.MalformedInput("CMS: an element runs past the end of the one holding it")
            return sub
        sub = self.header()
        return None if sub.tag == 0 and sub.length == 0 else sub

    def at_end(self) -> None:
        """Nothing may follow the message."""
        if self.fh.read(1):
            raise errors.MalformedInput("CMS: data after the end of the message")

    def octet_pieces(self, hdr: Header, depth: int = 0) -> Iterator[bytes]:
        """The content of an OCTET STRING (primitive or constructed, any length form), in pieces."""
        if not hdr.constructed:
            remaining = hdr.length
            while remaining:
                n = min(remaining, _READ_CHUNK)
                yield self.read_exact(n)
                remaining -= n
            return
        if depth >= MAX_DEPTH:
            raise errors.MalformedInput(f"CMS: nested deeper than {MAX_DEPTH} levels")
        end = None if hdr.length == INDEFINITE else self.pos + hdr.length
        while True:
            if end is not None and self.pos >= end:
                if self.pos > end:
                    raise errors.MalformedInput("CMS: a piece runs past the end of its OCTET STRING")
                return
            sub = self.header()
            if end is None and sub.tag == 0 and sub.length == 0:
                return
            if sub.tag not in (0x04, 0x24):
                raise errors.MalformedInput("CMS: a constructed OCTET STRING holds a non-OCTET STRING")
            if end is not None and (sub.length == INDEFINITE or self.pos + sub.length > end):
                raise errors.MalformedInput("CMS: a piece runs past the end of its OCTET STRING")
            yield from self.octet_pieces(sub, depth + 1)


@dataclass
class ContentFrame:
    """A ContentInfo read up to its content's first field: the content type (DER OID) and the
    open ContentInfo, [0] and content SEQUENCE, each with where its value starts."""

    content_type: bytes
    info: Header
    info_start: int
    explicit: Header
    explicit_start: int
    body: Header
    body_start: int

    def close(self, reader: Reader) -> None:
        """Check that the [0] and the ContentInfo end where the content did."""
        reader.close(self.explicit, self.explicit_start)
        reader.close(self.info, self.info_start)


def open_content_info(reader: Reader, check_type: Callable[[bytes], None], body_what: str) -> ContentFrame:
    """Read ContentInfo { contentType, [0] SEQUENCE { version, ... } } through the version;
    ``check_type`` refuses a content type (given as DER) by raising."""
    info = reader.expect(0x30, "a CMS ContentInfo")
    info_start = reader.pos
    content_type = reader.element()
    check_type(content_type)
    explicit = reader.expect(0xA0, "the [0] content")
    explicit_start = reader.pos
    body = reader.expect(0x30, body_what)
    body_start = reader.pos
    if reader.element()[:1] != b"\x02":
        raise errors.MalformedInput("CMS: expected a version")
    return ContentFrame(content_type, info, info_start, explicit, explicit_start, body, body_start)
