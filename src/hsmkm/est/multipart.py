"""The serverkeygen response (RFC 7030 §4.4.2): ``multipart/mixed`` with the encrypted key part
(``application/pkcs7-mime; smime-type=server-generated-key``) and the certificate part
(certs-only, as simpleenroll's answer), each base64. The encoder sends no
Content-Transfer-Encoding (RFC 8951 deprecates it); the parser ignores a ``base64`` one."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from hsmkm import errors
from hsmkm.est import transfer
from hsmkm.est.media import ContentType, MediaType, SmimeType, parse_content_type, pkcs7

MAX_RESPONSE = 1 << 20
MAX_PART = 256 << 10
MAX_PART_HEADERS = 8
MAX_PAIRS = 64
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=?-]{1,70}")  # RFC 2046 §5.1.1 bchars, no space
_HEADER = re.compile(rb"([!-9;-~]+):[ \t]*(.*?)[ \t]*")


@dataclass(frozen=True)
class ServerKeygenParts:
    key_part: bytes  # DER EnvelopedData
    certs_part: bytes  # DER certs-only PKCS#7


@dataclass(frozen=True)
class Encoded:
    content_type: str
    body: bytes


def encode(parts: ServerKeygenParts) -> Encoded:
    """The response body and its Content-Type; the key part first, as RFC 7030's example."""
    return encode_many([parts])


def encode_many(pairs: list[ServerKeygenParts]) -> Encoded:
    """Key part, certificate part, repeated for each key (hsmkm's keyhistory answer): one
    ``multipart/mixed`` of ``2 * len(pairs)`` parts, each pair in serverkeygen's order."""
    if not 1 <= len(pairs) <= MAX_PAIRS:
        raise errors.BadInput(f"a multipart answer holds 1 to {MAX_PAIRS} keys")
    boundary = "est-" + secrets.token_hex(12)  # base64 lines never start with "--"
    crlf = b"\r\n"
    out = b""
    for parts in pairs:
        for media, der in (
            (pkcs7(SmimeType.SERVER_GENERATED_KEY), parts.key_part),
            (pkcs7(SmimeType.CERTS_ONLY), parts.certs_part),
        ):
            out += (
                b"--"
                + boundary.encode()
                + crlf
                + b"Content-Type: "
                + media.encode()
                + crlf
                + crlf
                + transfer.encode(der)
            )
    out += b"--" + boundary.encode() + b"--" + crlf
    return Encoded(ContentType(MediaType.MULTIPART_MIXED.value, {"boundary": boundary}).format(), out)


def parse(content_type: str, body: bytes) -> ServerKeygenParts:
    """Client side: the two parts of a serverkeygen response. A plain ``application/pkcs8`` key
    part is refused: the KM never sends one, and the client asked for encryption."""
    pairs = _parse(content_type, body, 1, "the serverkeygen response")
    if len(pairs) != 1:
        raise errors.MalformedInput("the serverkeygen response: not one key part and one certificate part")
    return pairs[0]


def parse_many(content_type: str, body: bytes) -> list[ServerKeygenParts]:
    """Client side: a keyhistory response, key part and certificate part for each key."""
    return _parse(content_type, body, MAX_PAIRS, "the keyhistory response")


def _parse(content_type: str, body: bytes, max_pairs: int, what: str) -> list[ServerKeygenParts]:
    if len(body) > MAX_RESPONSE:
        raise errors.MalformedInput(f"{what}: larger than {MAX_RESPONSE} octets")
    ctype = parse_content_type(content_type)
    if not ctype.is_(MediaType.MULTIPART_MIXED):
        raise errors.MalformedInput(f"{what}: {ctype.media}, not multipart/mixed")
    boundary = ctype.params.get("boundary", "")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise errors.MalformedInput(f"{what}: a missing or bad boundary")
    kinds: list[tuple[SmimeType, bytes]] = []
    for headers, content in _split(body, boundary.encode(), what, 2 * max_pairs):
        part_type = _part_type(headers, what)
        if part_type.is_(MediaType.PKCS8):
            raise errors.MalformedInput(f"{what}: an unencrypted key part")
        smime = part_type.params.get("smime-type", "").lower()
        if not part_type.is_(MediaType.PKCS7_MIME) or smime not in {s.value for s in SmimeType}:
            raise errors.MalformedInput(f"{what}: an unexpected part {part_type.media}")
        kind = SmimeType(smime)
        kinds.append((kind, transfer.decode(content, MAX_PART, f"{what}: the {kind.value} part")))
    if not kinds or len(kinds) % 2:
        raise errors.MalformedInput(f"{what}: not pairs of a key part and a certificate part")
    pairs: list[ServerKeygenParts] = []
    for (first, key), (second, certs) in zip(kinds[::2], kinds[1::2], strict=True):
        if first is second:
            raise errors.MalformedInput(f"{what}: two {first.value} parts")
        if first is SmimeType.CERTS_ONLY:
            key, certs = certs, key
        pairs.append(ServerKeygenParts(key, certs))
    return pairs


def _split(body: bytes, boundary: bytes, what: str, max_parts: int) -> list[tuple[dict[str, str], bytes]]:
    """The parts between the delimiter lines (CRLF or LF line ends); preamble and epilogue
    are dropped as RFC 2046 says."""
    lines = body.split(b"\n")
    delimiter, close = b"--" + boundary, b"--" + boundary + b"--"
    parts: list[list[bytes]] = []
    current: list[bytes] | None = None
    closed = False
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        stripped = line.rstrip(b" \t")
        if stripped == close:
            if current is not None:
                parts.append(current)
            closed = True
            break
        if stripped == delimiter:
            if current is not None:
                parts.append(current)
            current = []
            if len(parts) >= max_parts:
                raise errors.MalformedInput(f"{what}: more than {max_parts} parts")
        elif current is not None:
            current.append(line)
    if not closed:
        raise errors.MalformedInput(f"{what}: no closing boundary")
    out: list[tuple[dict[str, str], bytes]] = []
    for part in parts:
        headers: dict[str, str] = {}
        i = 0
        while i < len(part) and part[i] != b"":
            m = _HEADER.fullmatch(part[i])
            if m is None or not m.group(2).isascii():
                raise errors.MalformedInput(f"{what}: a malformed part header")
            name = m.group(1).decode().lower()
            if name in headers or len(headers) >= MAX_PART_HEADERS:
                raise errors.MalformedInput(f"{what}: repeated or too many part headers")
            headers[name] = m.group(2).decode()
            i += 1
        if i == len(part):
            raise errors.MalformedInput(f"{what}: a part without a body")
        out.append((headers, b"\n".join(part[i + 1 :])))
    return out


def _part_type(headers: dict[str, str], what: str) -> ContentType:
    encoding = headers.get("content-transfer-encoding")
    if encoding is not None and encoding.lower() != "base64":
        raise errors.MalformedInput(f"{what}: Content-Transfer-Encoding {encoding!r}, not base64")
    if "content-type" not in headers:
        raise errors.MalformedInput(f"{what}: a part without Content-Type")
    return parse_content_type(headers["content-type"])
