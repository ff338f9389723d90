"""Header protection (RFC 9788).

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

import os
import re
from dataclasses import dataclass, field
from enum import Enum

from hsmkm.cms.mimefields import (
    CONTENT_OR_MIME,
    Field,
    decoded,
    get,
    make_field,
    param,
    split_fields,
    unfold,
    with_param,
    without_param,
)
from hsmkm.cms.smime import canonical


class HpMode(str, Enum):
    CIPHER = "cipher"
    CLEAR = "clear"


class Confidentiality(str, Enum):
    """RFC 9788 §4.3 header confidentiality policies."""

    BASELINE = "hcp_baseline"  # Subject becomes "[...]"; Comments and Keywords stay inside
    NO_CONFIDENTIALITY = "hcp_no_confidentiality"  # every field also outside, unchanged


OBSCURED_SUBJECT = "[...]"
_REPORTED = ("From", "To", "Cc", "Subject", "Reply-To", "Date")


def _hcp(policy: Confidentiality, f: Field) -> Field | None:
    """The outer copy of a protected field under the policy (None: kept inside only)."""
    if policy is Confidentiality.NO_CONFIDENTIALITY:
        return f
    low = f.name.lower()
    if low == "subject":
        return make_field(f.name, OBSCURED_SUBJECT)
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


def protect_head(
    head_fields: list[Field] | None,
    mode: HpMode,
    policy: Confidentiality = Confidentiality.BASELINE,
    legacy_display: bool = False,
) -> Protected:
    """The outer fields and the payload around the body, from the message's header fields
    (None: a message without a header, which then has nothing to protect)."""
    if head_fields is None:
        return Protected([], b"Content-Type: text/plain; charset=utf-8\r\n\r\n", b"")
    user = [f for f in head_fields if not CONTENT_OR_MIME.match(f.name)]
    content = [f for f in head_fields if CONTENT_OR_MIME.match(f.name)]
    ctype = get(content, "Content-Type")
    if ctype is None:
        ctype = make_field("Content-Type", "text/plain; charset=utf-8")
        content = [ctype, *content]
    outer_fields = list(user) if mode is HpMode.CLEAR else [o for f in user if (o := _hcp(policy, f)) is not None]
    hp_outer = [make_field("HP-Outer", f"{o.name}: {o.value}") for o in outer_fields] if mode is HpMode.CIPHER else []
    hidden = [f for f in user if mode is HpMode.CIPHER and _hcp(policy, f) != f]
    if legacy_display and hidden:
        boundary = "hp-" + os.urandom(9).hex()
        root = [
            make_field("Content-Type", f'multipart/mixed; boundary="{boundary}"; hp="{mode.value}"'),
            make_field("MIME-Version", "1.0"),
            *[f for f in user],
            *hp_outer,
        ]
        display = "".join(
            f"{f.name}: {f.value}\r\n" for f in hidden if f.name.lower() in ("subject", "from", "to", "cc", "date")
        )
        prefix = (
            b"".join(f.raw for f in root)
            + b"\r\n"
            + f"--{boundary}\r\n".encode()
            + b'Content-Type: text/plain; charset=utf-8; hp-legacy-display="1"\r\n'
            + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            + display.encode()
            + b"\r\n"
            + f"--{boundary}\r\n".encode()
            + b"".join(f.raw for f in content)
            + b"\r\n"
        )
        suffix = f"\r\n--{boundary}--\r\n".encode()
    else:
        fields = (
            [(with_param(f, f'hp="{mode.value}"') if f is ctype else f) for f in head_fields]
            if ctype in head_fields
            else [*head_fields, with_param(ctype, f'hp="{mode.value}"')]
        )
        prefix = b"".join(f.raw for f in [*fields, *hp_outer]) + b"\r\n"
        suffix = b""
    return Protected([(f.name, f.value) for f in outer_fields], prefix, suffix)


def protect(
    message: bytes, mode: HpMode, policy: Confidentiality = Confidentiality.BASELINE, legacy_display: bool = False
) -> tuple[Protected, bytes]:
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
    ctype = get(fields, "Content-Type")
    hp = param(ctype.value, "hp") if ctype else None
    legacy_v1 = ctype is not None and (param(ctype.value, "protected-headers") or "").lower() == "v1"
    if ctype is None or (hp not in ("cipher", "clear") and not legacy_v1):
        return Restored(_outer_bytes(outer) + b"".join(f.raw for f in fields) + b"\r\n" + body)
    mode = HpMode(hp) if hp in ("cipher", "clear") else None
    hp_outer = [f.value for f in fields if f.name.lower() == "hp-outer"]
    kept = [f for f in fields if f.name.lower() != "hp-outer"]
    kept = [without_param(without_param(f, "hp"), "protected-headers") if f is ctype else f for f in kept]
    user = [f for f in kept if not CONTENT_OR_MIME.match(f.name)]
    unwrapped = _drop_legacy_display(kept, body)
    if unwrapped is not None:
        head, body = unwrapped
    else:
        head = kept
    protected_names = {f.name.lower() for f in user}
    transport_only = [(k, v) for k, v in outer if k.lower() not in protected_names and not CONTENT_OR_MIME.match(k)]
    message = _outer_bytes(transport_only) + b"".join(f.raw for f in head) + b"\r\n" + body
    restored = Restored(message, [(f.name, f.value) for f in user], mode)
    restored.mismatches = _mismatches(user, outer, hp_outer if mode is HpMode.CIPHER else None)
    return restored


def has_legacy_display(head: bytes) -> bool:
    """Whether a payload's beginning shows a legacy display element to remove."""
    split = split_fields(head[: 64 << 10])
    if split is None:
        return False
    ctype = get(split[0], "Content-Type")
    return ctype is not None and param(ctype.value, "hp") is not None and b"hp-legacy-display" in head


def _drop_legacy_display(fields: list[Field], body: bytes) -> tuple[list[Field], bytes] | None:
    """A multipart/mixed root whose first part is a legacy display element, and one part
    besides: that part, with the user's header fields (what the sender wrote)."""
    ctype = get(fields, "Content-Type")
    if ctype is None or not ctype.value.lower().startswith("multipart/mixed"):
        return None
    boundary = param(ctype.value, "boundary")
    if not boundary:
        return None
    parts = _parts(body, boundary)
    if parts is None or len(parts) != 2:
        return None
    first = split_fields(parts[0])
    if first is None:
        return None
    fct = get(first[0], "Content-Type")
    if fct is None or param(fct.value, "hp-legacy-display") != "1":
        return None
    second = split_fields(parts[1])
    if second is None:
        return None
    user = [f for f in fields if not CONTENT_OR_MIME.match(f.name)]
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
        seen = next((unfold(v) for k, v in outer if k.lower() == name.lower()), None)
        if inner is None:
            continue
        want = expected_outer.get(name.lower()) if hp_outer is not None else inner
        if hp_outer is not None and name.lower() not in expected_outer:
            if seen is not None:
                out.append(f"the outer {name} {seen!r} was added in transit (the sender protected {inner!r})")
            continue
        if decoded(seen) != decoded(want):
            out.append(f"the outer {name} {seen!r} differs from the protected {name} {inner!r}")
    return out


def _outer_bytes(outer: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in outer).encode()
