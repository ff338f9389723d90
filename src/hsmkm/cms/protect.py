"""Header protection (RFC 9788) and the canonical, 7-bit form of signed content (RFC 8551 §3.1).

``protect`` turns a message as the user wrote it into the outer header fields and the
Cryptographic Payload: the user's header fields travel inside, on the payload's root part,
whose Content-Type carries ``hp="cipher"`` (encrypted) or ``hp="clear"`` (signed only); an
encrypted message also records each outer field it exposes as an ``HP-Outer`` field, and its
outer header fields are those a header confidentiality policy lets out. ``restore`` gives
back the message as the user wrote it, and names outer fields that differ from what was
protected. Payloads of draft-era senders (``protected-headers="v1"``, Thunderbird) are read
the same way, without HP-Outer.
"""

from __future__ import annotations

import base64
import email.header
import email.utils
import os
import quopri
import re
from dataclasses import dataclass, field
from enum import Enum

from hsmkm.cms.smime import canonical

MAX_LINE = 998  # RFC 5322 §2.1.1


class HpMode(str, Enum):
    CIPHER = "cipher"
    CLEAR = "clear"


class Confidentiality(str, Enum):
    """RFC 9788 §4.3 header confidentiality policies."""

    BASELINE = "hcp_baseline"  # Subject becomes "[...]"; Comments and Keywords stay inside
    NO_CONFIDENTIALITY = "hcp_no_confidentiality"  # every field also outside, unchanged


OBSCURED_SUBJECT = "[...]"
_CONTENT_OR_MIME = re.compile(r"^(content-|mime-version$)", re.I)
_REPORTED = ("From", "To", "Cc", "Subject", "Reply-To", "Date")


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
            return _fields(message), b""
        return None
    head = message[: m.start()]
    if not re.match(rb"^[!-9;-~]+:", head):
        return None
    return _fields(head), message[m.end():]


def _fields(head: bytes) -> list[Field]:
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


def _field(name: str, value: str) -> Field:
    return Field(name, f"{name}: {value}\r\n".encode())


def _get(fields: list[Field], name: str) -> Field | None:
    return next((f for f in fields if f.name.lower() == name.lower()), None)


def _param(ctype: str, name: str) -> str | None:
    m = re.search(r";\s*" + re.escape(name) + r'\s*=\s*"?([^";\s]*)"?', ctype, re.I)
    return m.group(1) if m else None


def _with_param(f: Field, param: str) -> Field:
    raw = f.raw.rstrip(b"\r\n")
    return Field(f.name, raw + f"; {param}".encode() + b"\r\n")


def _without_param(f: Field, name: str) -> Field:
    raw = re.sub(rb";\s*" + name.encode() + rb'\s*=\s*"?[^";\s]*"?', b"", f.raw.rstrip(b"\r\n"), flags=re.I)
    return Field(f.name, raw + b"\r\n")


def _hcp(policy: Confidentiality, f: Field) -> Field | None:
    """The outer copy of a protected field under the policy (None: kept inside only)."""
    if policy is Confidentiality.NO_CONFIDENTIALITY:
        return f
    low = f.name.lower()
    if low == "subject":
        return _field(f.name, OBSCURED_SUBJECT)
    if low in ("comments", "keywords"):
        return None
    return f


@dataclass(frozen=True)
class Protected:
    """A message split for the cryptographic layer: ``prefix`` + the user's body (made
    canonical) + ``suffix`` is the Cryptographic Payload."""

    outer: list[tuple[str, str]]
    prefix: bytes
    suffix: bytes


def protect_head(head_fields: list[Field] | None, mode: HpMode, policy: Confidentiality = Confidentiality.BASELINE,
                 legacy_display: bool = False) -> Protected:
    """The outer fields and the payload around the body, from the message's header fields
    (None: a message without a header, which then has nothing to protect)."""
    if head_fields is None:
        return Protected([], b"Content-Type: text/plain; charset=utf-8\r\n\r\n", b"")
    user = [f for f in head_fields if not _CONTENT_OR_MIME.match(f.name)]
    content = [f for f in head_fields if _CONTENT_OR_MIME.match(f.name)]
    ctype = _get(content, "Content-Type")
    if ctype is None:
        ctype = _field("Content-Type", "text/plain; charset=utf-8")
        content = [ctype, *content]
    outer_fields = list(user) if mode is HpMode.CLEAR else [o for f in user if (o := _hcp(policy, f)) is not None]
    hp_outer = [_field("HP-Outer", f"{o.name}: {o.value}") for o in outer_fields] if mode is HpMode.CIPHER else []
    hidden = [f for f in user if mode is HpMode.CIPHER and _hcp(policy, f) != f]
    if legacy_display and hidden:
        boundary = "hp-" + os.urandom(9).hex()
        root = [_field("Content-Type", f'multipart/mixed; boundary="{boundary}"; hp="{mode.value}"'),
                _field("MIME-Version", "1.0"), *[f for f in user], *hp_outer]
        display = "".join(f"{f.name}: {f.value}\r\n" for f in hidden if f.name.lower() in ("subject", "from", "to", "cc", "date"))
        prefix = (b"".join(f.raw for f in root) + b"\r\n"
                  + f"--{boundary}\r\n".encode()
                  + b'Content-Type: text/plain; charset=utf-8; hp-legacy-display="1"\r\n'
                  + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + display.encode() + b"\r\n"
                  + f"--{boundary}\r\n".encode()
                  + b"".join(f.raw for f in content) + b"\r\n")
        suffix = f"\r\n--{boundary}--\r\n".encode()
    else:
        fields = [(_with_param(f, f'hp="{mode.value}"') if f is ctype else f) for f in head_fields] if ctype in head_fields \
            else [*head_fields, _with_param(ctype, f'hp="{mode.value}"')]
        prefix = b"".join(f.raw for f in [*fields, *hp_outer]) + b"\r\n"
        suffix = b""
    return Protected([(f.name, f.value) for f in outer_fields], prefix, suffix)


def protect(message: bytes, mode: HpMode, policy: Confidentiality = Confidentiality.BASELINE,
            legacy_display: bool = False) -> tuple[Protected, bytes]:
    """``protect_head`` of a whole message, and the Cryptographic Payload."""
    split = split_fields(message)
    if split is None:
        p = protect_head(None, mode)
        return p, p.prefix + canonical(message)
    fields, body = split
    p = protect_head(fields, mode, policy, legacy_display)
    return p, p.prefix + canonical(body) + p.suffix


@dataclass
class Restored:
    """The message as its sender wrote it, and what the outer header fields changed."""

    message: bytes
    protected: list[tuple[str, str]] = field(default_factory=list)  # empty: no header protection
    mode: HpMode | None = None
    mismatches: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.protected if k.lower() == name.lower()), None)


def restore(payload: bytes, outer: list[tuple[str, str]]) -> Restored:
    """The message from a Cryptographic Payload and the outer header fields it came with."""
    split = split_fields(payload)
    if split is None:
        return Restored(_outer_bytes(outer) + b"\r\n" + payload)
    fields, body = split
    ctype = _get(fields, "Content-Type")
    hp = _param(ctype.value, "hp") if ctype else None
    legacy_v1 = ctype is not None and (_param(ctype.value, "protected-headers") or "").lower() == "v1"
    if ctype is None or (hp not in ("cipher", "clear") and not legacy_v1):
        return Restored(_outer_bytes(outer) + b"".join(f.raw for f in fields) + b"\r\n" + body)
    mode = HpMode(hp) if hp in ("cipher", "clear") else None
    hp_outer = [f.value for f in fields if f.name.lower() == "hp-outer"]
    kept = [f for f in fields if f.name.lower() != "hp-outer"]
    kept = [_without_param(_without_param(f, "hp"), "protected-headers") if f is ctype else f for f in kept]
    user = [f for f in kept if not _CONTENT_OR_MIME.match(f.name)]
    unwrapped = _drop_legacy_display(kept, body)
    if unwrapped is not None:
        head, body = unwrapped
    else:
        head = kept
    protected_names = {f.name.lower() for f in user}
    transport_only = [(k, v) for k, v in outer if k.lower() not in protected_names and not _CONTENT_OR_MIME.match(k)]
    message = _outer_bytes(transport_only) + b"".join(f.raw for f in head) + b"\r\n" + body
    restored = Restored(message, [(f.name, f.value) for f in user], mode)
    restored.mismatches = _mismatches(user, outer, hp_outer if mode is HpMode.CIPHER else None)
    return restored


def has_legacy_display(head: bytes) -> bool:
    """Whether a payload's beginning shows a legacy display element to remove."""
    split = split_fields(head[: 64 << 10])
    if split is None:
        return False
    ctype = _get(split[0], "Content-Type")
    return ctype is not None and _param(ctype.value, "hp") is not None and b"hp-legacy-display" in head


def _drop_legacy_display(fields: list[Field], body: bytes) -> tuple[list[Field], bytes] | None:
    """A multipart/mixed root whose first part is a legacy display element, and one part
    besides: that part, with the user's header fields (what the sender wrote)."""
    ctype = _get(fields, "Content-Type")
    if ctype is None or not ctype.value.lower().startswith("multipart/mixed"):
        return None
    boundary = _param(ctype.value, "boundary")
    if not boundary:
        return None
    parts = _parts(body, boundary)
    if parts is None or len(parts) != 2:
        return None
    first = split_fields(parts[0])
    if first is None:
        return None
    fct = _get(first[0], "Content-Type")
    if fct is None or _param(fct.value, "hp-legacy-display") != "1":
        return None
    second = split_fields(parts[1])
    if second is None:
        return None
    user = [f for f in fields if not _CONTENT_OR_MIME.match(f.name)]
    original_order = [*user, *second[0]]
    return original_order, second[1]


def _parts(body: bytes, boundary: str) -> list[bytes] | None:
    delim = b"--" + boundary.encode()
    pieces = re.split(rb"(?:^|\r\n)" + re.escape(delim) + rb"(--)?[ \t]*(?:\r\n|$)", body)
    # re.split with a group yields [preamble, g, part, g, part, '--', epilogue]
    out: list[bytes] = []
    i = 1
    while i < len(pieces) - 1:
        closing = pieces[i]
        if closing:
            return out
        out.append(pieces[i + 1])
        i += 2
    return None


def _mismatches(protected: list[Field], outer: list[tuple[str, str]], hp_outer: list[str] | None) -> list[str]:
    """Outer fields that differ from what the sender protected: with HP-Outer (encrypted), from
    what the sender said it exposed; without (signed only), from the protected value."""
    out: list[str] = []
    expected_outer: dict[str, str] = {}
    if hp_outer is not None:
        for item in hp_outer:
            name, _, value = item.partition(":")
            expected_outer.setdefault(name.strip().lower(), value.strip())
    for name in _REPORTED:
        inner = next((f.value for f in protected if f.name.lower() == name.lower()), None)
        seen = next((_unfold(v) for k, v in outer if k.lower() == name.lower()), None)
        if inner is None:
            continue
        want = expected_outer.get(name.lower()) if hp_outer is not None else inner
        if hp_outer is not None and name.lower() not in expected_outer:
            if seen is not None:
                out.append(f"the outer {name} {seen!r} was added in transit (the sender protected {inner!r})")
            continue
        if _decoded(seen) != _decoded(want):
            out.append(f"the outer {name} {seen!r} differs from the protected {name} {inner!r}")
    return out


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", value).strip()


def _decoded(value: str | None) -> str | None:
    """A field value as a reader sees it (RFC 2047 encoded words decoded)."""
    if value is None:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(_unfold(value))))
    except (ValueError, LookupError, UnicodeError):
        return _unfold(value)


def seven_bit_fields(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header fields with UTF-8 put in RFC 2047 encoded words."""
    out = []
    for name, value in fields:
        f = _encoded_field(_field(name, value))
        out.append((f.name, f.value))
    return out


def _outer_bytes(outer: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in outer).encode()


# --- 7-bit signed content ---------------------------------------------------------------------


def _is_7bit(data: bytes) -> bool:
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
        fields = [_encoded_field(f) for f in fields]
        entity = b"".join(f.raw for f in fields) + b"\r\n" + body
    ctype = _get(fields, "Content-Type")
    ct = ctype.value.lower() if ctype else "text/plain"
    cte_field = _get(fields, "Content-Transfer-Encoding")
    cte = cte_field.value.lower() if cte_field else "7bit"
    if ct.startswith("multipart/") and ctype is not None:
        boundary = _param(ctype.value, "boundary")
        if boundary and cte in ("7bit", "8bit", "binary"):
            return b"".join(f.raw for f in fields) + b"\r\n" + _seven_bit_multipart(body, boundary)
        return entity
    if cte in ("quoted-printable", "base64") or _is_7bit(body):
        return entity
    if ct.startswith("text/"):
        encoded = canonical(quopri.encodestring(body.replace(b"\r\n", b"\n")))
        name = "quoted-printable"
    else:
        text = base64.b64encode(body)
        encoded = b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + b"\r\n"
        name = "base64"
    new_cte = _field(cte_field.name if cte_field else "Content-Transfer-Encoding", name)
    out = [new_cte if f is cte_field else f for f in fields]
    if cte_field is None:
        out.append(new_cte)
    return b"".join(f.raw for f in out) + b"\r\n" + encoded


_ADDRESS_FIELDS = {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"}


def _encoded_field(f: Field) -> Field:
    """A UTF-8 header field in RFC 2047 encoded words (display names only, for addresses)."""
    if f.raw.isascii():
        return f
    if f.name.lower() in _ADDRESS_FIELDS:
        pairs = email.utils.getaddresses([f.value])
        value = ", ".join(email.utils.formataddr(p, charset="utf-8") for p in pairs)
    else:
        value = email.header.Header(f.value, "utf-8", header_name=f.name).encode()
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
            part = body[prev_end: m.start()]
            out += seven_bit(part) if part else part
        out += m.group(0)
        pos = m.end()
        if m.group(2).endswith(b"--"):
            out += body[pos:]
            return bytes(out)
        # the part starts after the CRLF that ends the delimiter line
        if body[pos:pos + 2] == b"\r\n":
            out += b"\r\n"
            pos += 2
        prev_end = pos
    out += body[pos:] if prev_end is None else body[prev_end:]
    return bytes(out)
