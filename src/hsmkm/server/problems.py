"""Errors as HTTP answers: each hsmkm error class to its status, the body one line of
``text/plain`` (RFC 7030 §4.2.3 as RFC 8951 allows) or RFC 9457 problem JSON on JSON paths."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from http import HTTPStatus

from starlette.responses import Response

from hsmkm import errors

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
TEXT_PLAIN = "text/plain; charset=utf-8"
MAX_DETAIL = 300
GENERIC_500 = "internal server error"
REALM = 'Basic realm="hsmkm"'


class Unauthenticated(errors.BadInput):
    """No usable HTTP Basic credentials (answered 401 with a challenge)."""


class UnsupportedMediaType(errors.BadInput):
    """A body of a content type the route does not take (answered 415)."""


class StageConflict(errors.PolicyViolation):
    """A step asked for before the step it follows (keyhistory before serverkeygen): 409."""


# The first class in this order that an error is an instance of gives its status.
_STATUS: tuple[tuple[type[errors.HsmkmError], HTTPStatus], ...] = (
    (Unauthenticated, HTTPStatus.UNAUTHORIZED),
    (UnsupportedMediaType, HTTPStatus.UNSUPPORTED_MEDIA_TYPE),
    (StageConflict, HTTPStatus.CONFLICT),
    (errors.CodeRejected, HTTPStatus.FORBIDDEN),
    (errors.NotFound, HTTPStatus.NOT_FOUND),
    (errors.AlreadyExists, HTTPStatus.CONFLICT),
    (errors.TokenRefusal, HTTPStatus.BAD_REQUEST),
    (errors.TokenError, HTTPStatus.SERVICE_UNAVAILABLE),
    (errors.Unreachable, HTTPStatus.SERVICE_UNAVAILABLE),
    (errors.BadInput, HTTPStatus.BAD_REQUEST),
    (errors.NegativeAnswer, HTTPStatus.BAD_REQUEST),
)


class ErrorFormat(str, Enum):
    TEXT = "text"
    PROBLEM = "problem"


def status_for(exc: errors.HsmkmError) -> HTTPStatus:
    """The HTTP status of an hsmkm error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return HTTPStatus.BAD_REQUEST


def one_line(text: str) -> str:
    """The message as one printable line of bounded length (it may quote what a client sent)."""
    flat = " ".join(text.split())
    clean = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in flat)
    return clean[:MAX_DETAIL]


def challenge(exc: errors.HsmkmError) -> dict[str, str]:
    """The headers an error's answer carries: a 401 names how to authenticate."""
    return {"WWW-Authenticate": REALM} if isinstance(exc, Unauthenticated) else {}


def error_response(
    status: HTTPStatus, message: str, fmt: ErrorFormat = ErrorFormat.TEXT, headers: Mapping[str, str] | None = None
) -> Response:
    line = one_line(message)
    if fmt is ErrorFormat.PROBLEM:
        body = json.dumps({"type": "about:blank", "title": status.phrase, "status": int(status), "detail": line})
        return Response(body + "\n", int(status), headers=dict(headers or {}), media_type=PROBLEM_JSON)
    return Response(line + "\n", int(status), headers=dict(headers or {}), media_type=TEXT_PLAIN)


def wants_json(accept: str | None) -> bool:
    """Whether an Accept header names JSON (then errors are problem JSON)."""
    if not accept:
        return False
    names = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(names & {JSON, PROBLEM_JSON})
