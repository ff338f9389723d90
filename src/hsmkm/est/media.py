"""The media types EST uses (RFC 7030 §4) and a strict reader of Content-Type."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from hsmkm import errors


class MediaType(str, Enum):
    PKCS10 = "application/pkcs10"
    PKCS7_MIME = "application/pkcs7-mime"
    PKCS8 = "application/pkcs8"
    CSRATTRS = "application/csrattrs"
    MULTIPART_MIXED = "multipart/mixed"


class SmimeType(str, Enum):
    CERTS_ONLY = "certs-only"
    SERVER_GENERATED_KEY = "server-generated-key"


MAX_CONTENT_TYPE = 512
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*({_TOKEN}|\"(?:[^\"\\\r\n]|\\[^\r\n])*\")\s*")
_TYPE = re.compile(rf"\s*({_TOKEN}/{_TOKEN})\s*")


@dataclass(frozen=True)
class ContentType:
    """A parsed Content-Type: the lower-cased type/subtype and its parameters (names lower-cased)."""

    media: str
    params: dict[str, str]

    def is_(self, media: MediaType) -> bool:
        return self.media == media.value

    def format(self) -> str:
        return self.media + "".join(f"; {k}={_quote(v)}" for k, v in self.params.items())


def _quote(value: str) -> str:
    return value if re.fullmatch(_TOKEN, value) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_content_type(header: str) -> ContentType:
    """``type/subtype; name=value ...`` (RFC 9110 §8.3); anything else is MalformedInput."""
    if len(header) > MAX_CONTENT_TYPE or not header.isascii():
        raise errors.MalformedInput("Content-Type: too long or not ASCII")
    m = _TYPE.match(header)
    if m is None:
        raise errors.MalformedInput("Content-Type: no type/subtype")
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(header):
        p = _PARAM.match(header, pos)
        if p is None:
            raise errors.MalformedInput("Content-Type: malformed parameter")
        name, value = p.group(1).lower(), p.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in params:
            raise errors.MalformedInput(f"Content-Type: parameter {name} given twice")
        params[name] = value
        pos = p.end()
    return ContentType(m.group(1).lower(), params)


def pkcs7(smime_type: SmimeType) -> str:
    return ContentType(MediaType.PKCS7_MIME.value, {"smime-type": smime_type.value}).format()
