"""RFC 7512 PKCS#11 URIs, and telling them apart from .epf paths."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from hsmkm import errors

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
_QUERY_ATTRS = {"module-path": "module_path", "module-name": "module_name", "pin-source": "pin_source"}
# RFC 7512 pchar / qchar minus the delimiters each part uses.
_PATH_SAFE = "-._~!$'()*+,=:@&"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUERY_SAFE = "-._~!$'()*+,=:@/?|"


class ObjectType(str, Enum):
    PRIVATE = "private"
    PUBLIC = "public"
    SECRET_KEY = "secret-key"
    CERT = "cert"
    DATA = "data"


@dataclass(frozen=True)
class Pkcs11Uri:
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
    module_path: str | None = None
    module_name: str | None = None
    pin_source: str | None = None
    vendor: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        if not text.startswith("pkcs11:"):
            raise errors.MalformedInput("a PKCS#11 URI starts with 'pkcs11:'")
        body = text[len("pkcs11:") :]
        path, _, query = body.partition("?")
        values: dict[str, object] = {}
        vendor: list[tuple[str, str]] = []
        seen: set[str] = set()

        def take(part: str, known: dict[str, str], where: str) -> None:
            name, sep, raw = part.partition("=")
            if not sep or not name:
                raise errors.MalformedInput(f"PKCS#11 URI: '{part}' is not name=value")
            if name in seen:
                raise errors.MalformedInput(f"PKCS#11 URI: attribute '{name}' appears twice")
            seen.add(name)
            if name == "pin-value":
                raise errors.SecretSourceError(
                    "PKCS#11 URI: pin-value puts the PIN in the URI; use pin-source=env:NAME or file:PATH"
                )
            if _BAD_PERCENT.search(raw):
                raise errors.MalformedInput(f"PKCS#11 URI: bad percent-encoding in '{name}'")
            decoded = unquote_to_bytes(raw)
            if name in known:
                attr = known[name]
                if attr == "id":
                    values[attr] = decoded
                    return
                try:
                    value = decoded.decode("utf-8")
                except UnicodeDecodeError:
                    raise errors.MalformedInput(f"PKCS#11 URI: '{name}' is not UTF-8") from None
                if attr == "type":
                    try:
                        values[attr] = ObjectType(value)
                    except ValueError:
                        raise errors.MalformedInput(f"PKCS#11 URI: unknown type '{value}'") from None
                    return
                values[attr] = value
            elif name.startswith("x-"):
                vendor.append((name, decoded.decode("utf-8", errors="replace")))
            else:
                raise errors.MalformedInput(f"PKCS#11 URI: unknown {where} attribute '{name}'")

        for part in filter(None, path.split(";")):
            take(part, _PATH_ATTRS, "path")
        for part in filter(None, query.split("&")):
            take(part, _QUERY_ATTRS, "query")
        return cls(**values, vendor=tuple(vendor))  # type: ignore[arg-type]

    def to_uri(self) -> str:
        path = []
        for name, attr in _PATH_ATTRS.items():
            value = getattr(self, attr)
            if value is None:
                continue
            if attr == "id":
                path.append(f"{name}=" + "".join(f"%{b:02X}" for b in value))
            else:
                text = value.value if isinstance(value, ObjectType) else value
                path.append(f"{name}={quote(text, safe=_PATH_SAFE.replace(';', ''))}")
        query = [
            f"{name}={quote(getattr(self, attr), safe=_QUERY_SAFE)}"
            for name, attr in _QUERY_ATTRS.items()
            if getattr(self, attr) is not None
        ]
        for name, value in self.vendor:
            path.append(f"{name}={quote(value, safe=_PATH_SAFE)}")
        out = "pkcs11:" + ";".join(path)
        return out + ("?" + "&".join(query) if query else "")

    def with_(self, **changes: Any) -> Pkcs11Uri:
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return self.to_uri()


def is_pkcs11_uri(text: str) -> bool:
    return text.startswith("pkcs11:")
