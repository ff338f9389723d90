"""Header fields of a MIME entity kept as written (RFC 5322 §2.2, RFC 2045), with the few
Content-Type parameter edits header protection needs."""

from __future__ import annotations

import email.header
import re
from dataclasses import dataclass

from hsmkm.cms.smime import canonical

CONTENT_OR_MIME = re.compile(r"^(content-|mime-version$)", re.I)


@dataclass(frozen=True)
class Field:
    """One header field as written: its name and its raw text (continuation lines included,
    CRLF-terminated), so that what was written comes back byte for byte."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        text = self.raw.decode("utf-8", "replace").split(":", 1)[1]
        return re.sub(r"\r?\n[ \t]", " ", text).strip()


def split_fields(message: bytes) -> tuple[list[Field], bytes] | None:
    """The header fields of a message or MIME part and its body; None if it has no header."""
    m = re.search(rb"\r?\n\r?\n", message)
    if m is None:
        if re.match(rb"^[!-9;-~]+:[^\r\n]*\r?\n?$", message):
            return fields_of(message), b""
        return None
    head = message[: m.start()]
    if not re.match(rb"^[!-9;-~]+:", head):
        return None
    return fields_of(head), message[m.end() :]


def fields_of(head: bytes) -> list[Field]:
    """The fields of a header section, continuation lines kept with their field."""
    out: list[Field] = []
    for line in re.split(rb"(?<=\n)", canonical(head.rstrip(b"\r\n")) + b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = Field(out[-1].name, out[-1].raw + line)
            continue
        name = line.split(b":", 1)[0].decode("ascii", "replace").strip()
        out.append(Field(name, line))
    return out


def make_field(name: str, value: str) -> Field:
    return Field(name, f"{name}: {value}\r\n".encode())


def get(fields: list[Field], name: str) -> Field | None:
    return next((f for f in fields if f.name.lower() == name.lower()), None)


def param(ctype: str, name: str) -> str | None:
    m = re.search(r";\s*" + re.escape(name) + r'\s*=\s*"?([^";\s]*)"?', ctype, re.I)
    return m.group(1) if m else None


def with_param(f: Field, parameter: str) -> Field:
    raw = f.raw.rstrip(b"\r\n")
    return Field(f.name, raw + f"; {parameter}".encode() + b"\r\n")


def without_param(f: Field, name: str) -> Field:
    raw = re.sub(rb";\s*" + name.encode() + rb'\s*=\s*"?[^";\s]*"?', b"", f.raw.rstrip(b"\r\n"), flags=re.I)
    return Field(f.name, raw + b"\r\n")


def unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", value).strip()


def decoded(value: str | None) -> str | None:
    """A field value as a reader sees it (RFC 2047 encoded words decoded)."""
    if value is None:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(unfold(value))))
    except (ValueError, LookupError, UnicodeError):
        return unfold(value)
