"""S/MIME (RFC 8551) MIME framing around CMS: application/pkcs7-mime and multipart/signed.

Input may be a MIME message, bare DER CMS or PEM; output is MIME with the RFC 5322 headers
of the input (From, To, Subject, Date, …) kept on the outside.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from enum import Enum

from hsmkm import errors


class SmimeType(str, Enum):
    SIGNED_DATA = "signed-data"
    ENVELOPED_DATA = "enveloped-data"
    AUTH_ENVELOPED_DATA = "authEnveloped-data"


@dataclass(frozen=True)
class Parsed:
    """What an input message holds."""

    outer_headers: list[tuple[str, str]]
    der: bytes
    detached_content: bytes | None  # multipart/signed: the signed entity, canonical CRLF


def canonical(data: bytes) -> bytes:
    """Line endings to CRLF (RFC 8551 §3.1.1)."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def split_head(data: bytes) -> tuple[list[tuple[str, str]], int] | None:
    """Headers of a MIME entity and the offset of its body, or None if ``data`` does not
    start with headers."""
    m = re.search(rb"\r?\n\r?\n", data)
    if m is None:
        return None
    lines = re.split(rb"\r?\n", data[: m.start()])
    if not lines or not re.match(rb"^[!-9;-~]+:", lines[0]):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and headers:
            prev_name, prev_value = headers[-1]
            headers[-1] = (prev_name, prev_value + "\r\n" + line.decode("utf-8", "replace"))
            continue
        raw_name, sep, raw_value = line.partition(b":")
        if not sep:
            return None
        headers.append((raw_name.decode("ascii", "replace").strip(), raw_value.decode("utf-8", "replace").strip()))
    return headers, m.end()


def _split_head(data: bytes) -> tuple[list[tuple[str, str]], bytes] | None:
    split = split_head(data)
    return None if split is None else (split[0], data[split[1] :])


def outer_of(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The header fields that are not the S/MIME layer's own (Content-*, MIME-Version)."""
    return [(k, v) for k, v in headers if not k.lower().startswith("content-") and k.lower() != "mime-version"]


def header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def entity_of(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Split a message into its outer (non Content-*) headers and the MIME entity to protect."""
    split = _split_head(message)
    if split is None:
        return [], canonical(b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + message)
    headers, body = split
    outer = [(k, v) for k, v in headers if not k.lower().startswith("content-") and k.lower() != "mime-version"]
    content = [(k, v) for k, v in headers if k.lower().startswith("content-")]
    if not content:
        content = [("Content-Type", "text/plain; charset=utf-8")]
    head = "".join(f"{k}: {v}\r\n" for k, v in content)
    return outer, canonical(head.encode() + b"\r\n" + body)


def _b64(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\r\n"


def _outer(outer: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in outer).encode() + b"MIME-Version: 1.0\r\n"


def pkcs7_mime_head(smime_type: SmimeType, outer: list[tuple[str, str]]) -> bytes:
    """The headers of an application/pkcs7-mime message, up to its base64 body."""
    return (
        _outer(outer)
        + f"Content-Type: application/pkcs7-mime; smime-type={smime_type.value}; name=smime.p7m\r\n".encode()
        + b"Content-Transfer-Encoding: base64\r\n"
        + b"Content-Disposition: attachment; filename=smime.p7m\r\n\r\n"
    )


def pkcs7_mime(der: bytes, smime_type: SmimeType, outer: list[tuple[str, str]]) -> bytes:
    return pkcs7_mime_head(smime_type, outer) + _b64(der)


def multipart_signed_head(micalg: str, outer: list[tuple[str, str]], boundary: str) -> bytes:
    """A multipart/signed message up to its first part (the signed entity comes next)."""
    return (
        _outer(outer)
        + f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg={micalg}; '
        f'boundary="{boundary}"\r\n\r\n'.encode()
        + b"This is an S/MIME signed message\r\n\r\n"
        + f"--{boundary}\r\n".encode()
    )


def multipart_signed_tail(signature_der: bytes, boundary: str) -> bytes:
    """The rest of a multipart/signed message after the signed entity: the signature part."""
    return (
        f"\r\n--{boundary}\r\n".encode()
        + b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        + b"Content-Transfer-Encoding: base64\r\n"
        + b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
        + _b64(signature_der)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def multipart_signed(entity: bytes, signature_der: bytes, micalg: str, outer: list[tuple[str, str]]) -> bytes:
    boundary = "----hsmkm-" + os.urandom(12).hex()
    return multipart_signed_head(micalg, outer, boundary) + entity + multipart_signed_tail(signature_der, boundary)


def _decode_b64(body: bytes) -> bytes:
    try:
        return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
    except (binascii.Error, ValueError):
        raise errors.MalformedInput("the S/MIME part is not valid base64") from None


def parse(data: bytes) -> Parsed:
    """Bare DER, PEM, application/pkcs7-mime or multipart/signed."""
    if not data:
        raise errors.MalformedInput("empty input")
    if data[:1] == b"\x30":
        return Parsed([], data, None)
    if data.lstrip().startswith(b"-----BEGIN"):
        body = re.sub(rb"-----[A-Z0-9 ]+-----", b"", data)
        return Parsed([], _decode_b64(body), None)
    split = _split_head(data)
    if split is None:
        raise errors.MalformedInput("not an S/MIME message, DER or PEM")
    headers, body = split
    ctype = header_value(headers, "Content-Type") or ""
    outer = [(k, v) for k, v in headers if not k.lower().startswith("content-") and k.lower() != "mime-version"]
    low = ctype.lower()
    if low.startswith(("application/pkcs7-mime", "application/x-pkcs7-mime")):
        enc = (header_value(headers, "Content-Transfer-Encoding") or "").lower()
        der = _decode_b64(body) if enc == "base64" else body
        return Parsed(outer, der, None)
    if low.startswith("multipart/signed"):
        m = re.search(r'boundary="?([^";]+)"?', ctype, re.I)
        if m is None:
            raise errors.MalformedInput("multipart/signed without a boundary")
        delim = b"--" + m.group(1).encode()
        parts = re.split(rb"(?:\r?\n)?" + re.escape(delim) + rb"(?:--)?[ \t]*\r?\n?", body)
        parts = [p for p in parts[1:] if p.strip()]
        if len(parts) < 2:
            raise errors.MalformedInput("multipart/signed needs the content and the signature")
        content, sig_part = parts[0], parts[1]
        sig_split = _split_head(sig_part)
        if sig_split is None:
            raise errors.MalformedInput("malformed signature part")
        return Parsed(outer, _decode_b64(sig_split[1]), canonical(content))
    raise errors.MalformedInput(f"not an S/MIME message (Content-Type {ctype or 'missing'})")


def is_smime(entity: bytes) -> bool:
    split = _split_head(entity)
    if split is None:
        return entity[:1] == b"\x30"
    ctype = (header_value(split[0], "Content-Type") or "").lower()
    return ctype.startswith(("application/pkcs7-mime", "application/x-pkcs7-mime", "multipart/signed"))
