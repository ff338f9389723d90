"""EST bodies are base64 (RFC 7030 §4, as RFC 8951 clarifies: with or without line breaks, whatever
Content-Transfer-Encoding says): a tolerant, bounded decoder and the encoder we send."""

from __future__ import annotations

import base64
import binascii
import re

from hsmkm import errors

LINE = 64  # what openssl's base64 filter reads back (it refuses very long lines)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def encoded_limit(decoded_limit: int) -> int:
    """The most octets a base64 body of ``decoded_limit`` decoded octets may take on the wire,
    with CRLF line breaks every 64 characters and some slack for other whitespace."""
    chars = 4 * ((decoded_limit + 2) // 3)
    return chars + 2 * (chars // LINE + 1) + 1024


def decode(body: bytes, limit: int, what: str) -> bytes:
    """The octets of a base64 body of at most ``limit`` decoded octets. Whitespace anywhere is
    ignored, missing padding is restored; any other character is MalformedInput."""
    if len(body) > encoded_limit(limit):
        raise errors.MalformedInput(f"{what}: larger than {limit} octets")
    text = _WHITESPACE.sub(b"", body)
    if not text:
        raise errors.MalformedInput(f"{what}: empty")
    if _ALPHABET.fullmatch(text) is None:
        raise errors.MalformedInput(f"{what}: not base64")
    text = text.rstrip(b"=")
    if len(text) % 4 == 1:
        raise errors.MalformedInput(f"{what}: truncated base64")
    text += b"=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise errors.MalformedInput(f"{what}: not base64") from None
    if len(data) > limit:
        raise errors.MalformedInput(f"{what}: larger than {limit} octets")
    return data


def encode(data: bytes) -> bytes:
    """Base64 in lines of 64 characters, each ended by CRLF."""
    text = base64.b64encode(data)
    return b"".join(text[i : i + LINE] + b"\r\n" for i in range(0, len(text), LINE))
