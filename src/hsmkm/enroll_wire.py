"""The enrollment messages as bytes on a wire: canonical JSON (sorted keys, no spaces, ASCII),
binary fields in base64, a version number, every size bounded.

A transport carries these bytes and nothing else, so replacing the carrier (in-process, HTTPS)
changes neither side. Decoding is strict: the exact fields of the version, nothing more; the
canonical form only (what encoding the decoded message gives back); anything else is
``MalformedInput``.
"""

from __future__ import annotations

import base64
import binascii
import json
from enum import Enum
from typing import Any

from hsmkm import errors
from hsmkm.protocol import EnrollRequest, EnrollResponse, SealedKey

VERSION = 1

MAX_REQUEST = 256 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
MAX_FIELD = 64 * 1024  # a CSR, a certificate, a sealed PKCS#8 key
MAX_HISTORY = 4096  # archived keys handed back after a recovery
MAX_TEXT = 1024  # an address, a code
MAX_SALT = 64


class MessageType(str, Enum):
    REQUEST = "enroll-request"
    RESPONSE = "enroll-response"


def encode_request(request: EnrollRequest) -> bytes:
    return _dump(
        {
            "v": VERSION,
            "type": MessageType.REQUEST.value,
            "email": request.email,
            "code": request.code,
            "csr": _b64(request.csr_der),
        },
        MAX_REQUEST,
    )


def decode_request(data: bytes) -> EnrollRequest:
    obj = _load(data, MAX_REQUEST, MessageType.REQUEST, {"email", "code", "csr"})
    request = EnrollRequest(
        email=_text(obj, "email"),
        code=_text(obj, "code"),
        csr_der=_bytes(obj, "csr", MAX_FIELD),
    )
    _canonical(data, encode_request(request))
    return request


def request_email(data: bytes) -> str:
    """The address an encoded request names (the whole request decoded, strictly)."""
    return decode_request(data).email


def encode_response(response: EnrollResponse) -> bytes:
    return _dump(
        {
            "v": VERSION,
            "type": MessageType.RESPONSE.value,
            "email": response.email,
            "sign_cert": _b64(response.sign_cert_der),
            "encryption": _sealed_obj(response.encryption),
            "ca_cert": _b64(response.ca_cert_der),
            "salt": _b64(response.salt),
            "history": [_sealed_obj(item) for item in response.history],
        },
        MAX_RESPONSE,
    )


def decode_response(data: bytes) -> EnrollResponse:
    obj = _load(
        data,
        MAX_RESPONSE,
        MessageType.RESPONSE,
        {"email", "sign_cert", "encryption", "ca_cert", "salt", "history"},
    )
    history = obj["history"]
    if not isinstance(history, list) or len(history) > MAX_HISTORY:
        raise errors.MalformedInput(f"enrollment message: history is not a list of at most {MAX_HISTORY} keys")
    response = EnrollResponse(
        email=_text(obj, "email"),
        sign_cert_der=_bytes(obj, "sign_cert", MAX_FIELD),
        encryption=_sealed(obj["encryption"]),
        ca_cert_der=_bytes(obj, "ca_cert", MAX_FIELD),
        salt=_bytes(obj, "salt", MAX_SALT),
        history=[_sealed(item) for item in history],
    )
    _canonical(data, encode_response(response))
    return response


# --- the pieces ---------------------------------------------------------------------------


def _sealed_obj(item: SealedKey) -> dict[str, Any]:
    return {"cert": _b64(item.cert_der), "sealed": _b64(item.sealed)}


def _sealed(obj: object) -> SealedKey:
    if not isinstance(obj, dict) or set(obj) != {"cert", "sealed"}:
        raise errors.MalformedInput("enrollment message: a sealed key is not {cert, sealed}")
    return SealedKey(_bytes(obj, "cert", MAX_FIELD), _bytes(obj, "sealed", MAX_FIELD))


def _dump(obj: dict[str, Any], limit: int) -> bytes:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(data) > limit:
        raise errors.BadInput(f"enrollment message of {len(data)} bytes is over the limit of {limit}")
    return data


def _load(data: bytes, limit: int, kind: MessageType, fields: set[str]) -> dict[str, Any]:
    if len(data) > limit:
        raise errors.MalformedInput(f"enrollment message of {len(data)} bytes is over the limit of {limit}")
    try:
        obj = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise errors.MalformedInput("enrollment message: not canonical JSON") from None
    if not isinstance(obj, dict):
        raise errors.MalformedInput("enrollment message: not a JSON object")
    if obj.get("v") != VERSION or type(obj.get("v")) is not int:
        raise errors.MalformedInput(f"enrollment message: version {obj.get('v')!r} is not {VERSION}")
    if obj.get("type") != kind.value:
        raise errors.MalformedInput(f"enrollment message: not an {kind.value}")
    if set(obj) != fields | {"v", "type"}:
        raise errors.MalformedInput("enrollment message: unexpected or missing fields")
    return obj


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise errors.MalformedInput(f"enrollment message: {name} is not a string of at most {MAX_TEXT} characters")
    return value


def _bytes(obj: dict[str, Any], name: str, limit: int) -> bytes:
    value = obj[name]
    if not isinstance(value, str) or len(value) > 4 * ((limit + 2) // 3):
        raise errors.MalformedInput(f"enrollment message: {name} is not base64 of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise errors.MalformedInput(f"enrollment message: {name} is not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _canonical(data: bytes, again: bytes) -> None:
    if data != again:
        raise errors.MalformedInput("enrollment message: not in canonical form")
