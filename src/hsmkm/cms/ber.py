"""A small incremental BER reader and the indefinite-length pieces the streaming writer needs.

Messages of any size pass through in chunks: the writer emits indefinite-length constructed
encodings (X.690 §8.1.3.6), the reader walks headers off a stream and yields the primitive
pieces of a constructed OCTET STRING without holding the whole value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from hsmkm import errors

EOC = b"\x00\x00"
INDEFINITE = -1


def header(tag: int, length: int) -> bytes:
    """Identifier and length octets; ``length`` INDEFINITE gives 0x80."""
    if length == INDEFINITE:
        return bytes([tag, 0x80])
    if length < 0x80:
        return bytes([tag, length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body


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
        data = self.fh.read(n)
        while len(data) < n:
            more = self.fh.read(n - len(data))
            if not more:
                raise errors.MalformedInput("CMS: truncated input")
            data += more
        self.pos += n
        return data

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

    def element(self, hdr: Header | None = None) -> bytes:
        """One whole element (its header included), re-encoded with definite lengths."""
        hdr = hdr or self.header()
        if hdr.length != INDEFINITE:
            return header(hdr.tag, hdr.length) + self.read_exact(hdr.length)
        parts = []
        while True:
            sub = self.header()
            if sub.tag == 0 and sub.length == 0:
                break
            parts.append(self.element(sub))
        body = b"".join(parts)
        return header(hdr.tag, len(body)) + body

    def end_of_contents(self) -> None:
        if self.read_exact(2) != EOC:
            raise errors.MalformedInput("CMS: expected end-of-contents")

    def octet_pieces(self, hdr: Header) -> Iterator[bytes]:
        """The content of an OCTET STRING (primitive or constructed, any length form), in pieces."""
        if not hdr.constructed:
            remaining = hdr.length
            while remaining:
                n = min(remaining, 1 << 20)
                yield self.read_exact(n)
                remaining -= n
            return
        end = None if hdr.length == INDEFINITE else self.pos + hdr.length
        while True:
            if end is not None and self.pos >= end:
                return
            sub = self.header()
            if end is None and sub.tag == 0 and sub.length == 0:
                return
            if sub.tag not in (0x04, 0x24):
                raise errors.MalformedInput("CMS: a constructed OCTET STRING holds a non-OCTET STRING")
            yield from self.octet_pieces(sub)
