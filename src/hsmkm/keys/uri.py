"""RFC 7512 PKCS#11 URIs, and telling them apart from .epf paths."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from hsmkm import errors

SCHEME = "pkcs11:"

# path attribute name -> field, in RFC 7512's order (to_uri writes them in this order)
_PATH_ATTRS = {
    "token": "token",
    "manufacturer": "manufacturer",
    "serial": "serial",
    "model": "model",
    "library-manufacturer": "library_manufacturer",
    "library-description": "library_description",
    "library-version": "library_version",
    "slot-description": "slot_description",
    "slot-manufacturer": "slot_manufacturer",
    "slot-id": "slot_id",
    "object": "object",
    "type": "type",
    "id": "id",
}
_QUERY_ATTRS = {"module-name": "module_name", "module-path": "module_path", "pin-source": "pin_source"}

# RFC 7512 section 2.3 character classes
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_RES_AVAIL = ":[]@!$'()*+,="
_PCHAR_SAFE = _RES_AVAIL + "&"  # quote() always keeps _UNRESERVED
_QCHAR_SAFE = _RES_AVAIL + "/?|"
_PCHAR = re.compile(r"(?:[" + re.escape(_UNRESERVED + _PCHAR_SAFE) + r"]|%[0-9A-Fa-f]{2})*")
_QCHAR = re.compile(r"(?:[" + re.escape(_UNRESERVED + _QCHAR_SAFE) + r"]|%[0-9A-Fa-f]{2})*")
_ATTR_NAME = re.compile(r"[A-Za-z0-9_-]+")
_VENDOR_NAME = re.compile(r"x-[A-Za-z0-9_-]+")
_SLOT_ID = re.compile(r"[0-9]+")
_LIBRARY_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class ObjectType(str, Enum):
    """The ``type`` path attribute (CKA_CLASS)."""

    PRIVATE = "private"
    PUBLIC = "public"
    SECRET_KEY = "secret-key"
    CERT = "cert"
    DATA = "data"


def _bad(message: str) -> errors.MalformedInput:
    return errors.MalformedInput(f"PKCS#11 URI: {message}")


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI; ``None`` means the attribute is absent (matches anything)."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: str | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: str | None = None
    object: str | None = None
    type: ObjectType | None = None
    id: bytes | None = None
    module_name: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    vendor: tuple[tuple[str, str], ...] = ()  # x-… path attributes, in order
    vendor_query: tuple[tuple[str, str], ...] = ()  # x-… query attributes, in order

    def __post_init__(self) -> None:
        if self.slot_id is not None and not _SLOT_ID.fullmatch(self.slot_id):
            raise _bad(f"slot-id must be a decimal number, not '{self.slot_id}'")
        if self.library_version is not None and not _LIBRARY_VERSION.fullmatch(self.library_version):
            raise _bad(f"library-version must be M or M.N, not '{self.library_version}'")
        for name, _ in self.vendor + self.vendor_query:
            if not _VENDOR_NAME.fullmatch(name):
                raise _bad(f"'{name}' is not a vendor attribute name (x-…)")

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``pkcs11:path?query``; malformed input raises MalformedInput, pin-value SecretSourceError."""
        if not is_pkcs11_uri(text):
            raise _bad("it must start with 'pkcs11:'")
        body = text[len(SCHEME) :]
        if "#" in body:
            raise _bad("a fragment ('#') is not allowed; percent-encode it as %23")
        path, _, query = body.partition("?")
        values: dict[str, Any] = {}
        vendor: dict[str, list[tuple[str, str]]] = {"path": [], "query": []}
        seen: set[str] = set()
        parts = [("path", p) for p in path.split(";")] if path else []
        parts += [("query", q) for q in query.split("&")] if query else []
        for where, part in parts:
            name, sep, raw = part.partition("=")
            if not sep or not _ATTR_NAME.fullmatch(name):
                shown = part if len(part) <= 40 else part[:40] + "…"
                raise _bad(f"'{shown}' is not a {where} attribute name=value")
            if name == "pin-value":
                raise errors.SecretSourceError(
                    "PKCS#11 URI: pin-value would put the PIN on the command line; "
                    "use pin-source=env:NAME or pin-source=file:PATH"
                )
            if name in seen:
                raise _bad(f"attribute '{name}' appears twice")
            seen.add(name)
            known = _PATH_ATTRS if where == "path" else _QUERY_ATTRS
            other = _QUERY_ATTRS if where == "path" else _PATH_ATTRS
            if name in other:
                raise _bad(f"'{name}' belongs in the {'query' if where == 'path' else 'path'}")
            if not (_PCHAR if where == "path" else _QCHAR).fullmatch(raw):
                raise _bad(f"the value of '{name}' has a character that must be percent-encoded")
            decoded = unquote_to_bytes(raw)
            if name == "id":
                values["id"] = decoded
                continue
            try:
                value = decoded.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"the value of '{name}' is not UTF-8") from None
            if name in known:
                if name == "type":
                    try:
                        values["type"] = ObjectType(value)
                    except ValueError:
                        allowed = ", ".join(t.value for t in ObjectType)
                        raise _bad(f"type '{value}' is not one of {allowed}") from None
                else:
                    values[known[name]] = value
            elif _VENDOR_NAME.fullmatch(name):
                vendor[where].append((name, value))
            else:
                raise _bad(f"unknown {where} attribute '{name}'")
        return cls(**values, vendor=tuple(vendor["path"]), vendor_query=tuple(vendor["query"]))

    def to_uri(self) -> str:
        """The canonical text: RFC 7512 attribute order, vendor attributes last, minimal escaping."""
        path: list[str] = []
        for name, attr in _PATH_ATTRS.items():
            value = getattr(self, attr)
            if value is None:
                continue
            if attr == "id":
                # the id is binary: every octet encoded, as RFC 7512's examples do
                path.append(f"{name}=" + "".join(f"%{b:02X}" for b in value))
            else:
                text = value.value if isinstance(value, ObjectType) else value
                path.append(f"{name}={quote(text, safe=_PCHAR_SAFE)}")
        path += [f"{name}={quote(value, safe=_PCHAR_SAFE)}" for name, value in self.vendor]
        query = [
            f"{name}={quote(getattr(self, attr), safe=_QCHAR_SAFE)}"
            for name, attr in _QUERY_ATTRS.items()
            if getattr(self, attr) is not None
        ]
        query += [f"{name}={quote(value, safe=_QCHAR_SAFE)}" for name, value in self.vendor_query]
        return SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")

    def with_(self, **changes: Any) -> Pkcs11Uri:
        """A copy with the given fields changed (field names, e.g. ``object='bob-sign'``)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return self.to_uri()


@dataclass(frozen=True)
class EpfPath:
    """A keystore named by a filesystem path: an .epf (PKCS#12) file."""

    path: Path


KeystoreRef = Pkcs11Uri | EpfPath


def is_pkcs11_uri(text: str) -> bool:
    """Whether ``text`` names a token (the URI scheme is case-insensitive)."""
    return text[: len(SCHEME)].lower() == SCHEME


def classify_keystore_ref(text: str) -> KeystoreRef:
    """A ``pkcs11:`` URI (parsed) or the path of an .epf file."""
    if is_pkcs11_uri(text):
        return Pkcs11Uri.parse(text)
    if not text.strip():
        raise errors.MalformedInput("keystore: an empty name is neither a path nor a pkcs11: URI")
    if "\x00" in text:
        raise errors.MalformedInput("keystore: a path cannot contain a NUL character")
    return EpfPath(Path(text))
