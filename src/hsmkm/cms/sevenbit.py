"""The canonical, 7-bit form of clear-signed content (RFC 8551 §3.1): CRLF line ends, and
every part that is not 7-bit transfer-encoded; UTF-8 header fields in RFC 2047 words."""

from __future__ import annotations

import base64
import email.header
import email.utils
import quopri
import re

from hsmkm.cms.mimefields import Field, get, make_field, param, split_fields
from hsmkm.cms.smime import canonical

MAX_LINE = 998  # RFC 5322 §2.1.1


def seven_bit_fields(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header fields with UTF-8 put in RFC 2047 encoded words."""
    out = []
    for name, value in fields:
        f = encoded_field(make_field(name, value))
        out.append((f.name, f.value))
    return out


def is_7bit(data: bytes) -> bool:
    if not data.isascii() or b"\x00" in data:
        return False
    return all(len(line) <= MAX_LINE for line in data.split(b"\r\n"))


def seven_bit(entity: bytes) -> bytes:
    """The entity with every part that is not 7-bit transfer-encoded (quoted-printable for
    text, base64 otherwise), recursively through multiparts; CRLF line ends (RFC 8551 §3.1)."""
    entity = canonical(entity)
    split = split_fields(entity)
    if split is None:
        return entity
    fields, body = split
    if any(not f.raw.isascii() for f in fields):
        fields = [encoded_field(f) for f in fields]
        entity = b"".join(f.raw for f in fields) + b"\r\n" + body
    ctype = get(fields, "Content-Type")
    ct = ctype.value.lower() if ctype else "text/plain"
    cte_field = get(fields, "Content-Transfer-Encoding")
    cte = cte_field.value.lower() if cte_field else "7bit"
    if ct.startswith("multipart/") and ctype is not None:
        boundary = param(ctype.value, "boundary")
        if boundary and cte in ("7bit", "8bit", "binary"):
            return b"".join(f.raw for f in fields) + b"\r\n" + _seven_bit_multipart(body, boundary)
        return entity
    if cte in ("quoted-printable", "base64") or is_7bit(body):
        return entity
    if ct.startswith("text/"):
        encoded = canonical(quopri.encodestring(body.replace(b"\r\n", b"\n")))
        name = "quoted-printable"
    else:
        text = base64.b64encode(body)
        encoded = b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\r\n"
        name = "base64"
    new_cte = make_field(cte_field.name if cte_field else "Content-Transfer-Encoding", name)
    out = [new_cte if f is cte_field else f for f in fields]
    if cte_field is None:
        out.append(new_cte)
    return b"".join(f.raw for f in out) + b"\r\n" + encoded


_ADDRESS_FIELDS = {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"}


def encoded_field(f: Field) -> Field:
    """A UTF-8 header field in RFC 2047 encoded words (display names only, for addresses)."""
    if f.raw.isascii():
        return f
    if f.name.lower() in _ADDRESS_FIELDS:
        pairs = email.utils.getaddresses([f.value])
        value = ", ".join(email.utils.formataddr(p, charset="utf-8") for p in pairs)
    else:
        value = email.header.Header(f.value, "utf-8", header_name=f.name).encode(linesep="\r\n")
    return Field(f.name, f"{f.name}: {value}\r\n".encode("ascii", "replace"))


def _seven_bit_multipart(body: bytes, boundary: str) -> bytes:
    delim = b"--" + boundary.encode()
    pattern = re.compile(rb"(^|\r\n)(" + re.escape(delim) + rb"(?:--)?)([ \t]*)(?=\r\n|$)")
    out = bytearray()
    pos = 0
    prev_end: int | None = None
    for m in pattern.finditer(body):
        if prev_end is None:
            out += body[: m.start()]  # the preamble
        else:
            part = body[prev_end : m.start()]
            out += seven_bit(part) if part else part
        out += m.group(0)
        pos = m.end()
        if m.group(2).endswith(b"--"):
            out += body[pos:]
            return bytes(out)
        # the part starts after the CRLF that ends the delimiter line
        if body[pos : pos + 2] == b"\r\n":
            out += b"\r\n"
            pos += 2
        prev_end = pos
    out += body[pos:] if prev_end is None else body[prev_end:]
    return bytes(out)
