"""What a route may raise, as its HTTP answer: hsmkm errors by class, database errors as the
store translates them, and anything else a generic 500 with one log line (its class only, never
its message, which might hold what a client sent) — never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import Response

from hsmkm import errors
from hsmkm.server.accesslog import Log
from hsmkm.server.problems import GENERIC_500, ErrorFormat, challenge, error_response, one_line, status_for, wants_json
from hsmkm.store import errors as store_errors

Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(log: Log, json_path: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Wrap an endpoint so that every exception becomes its answer (problem JSON on a JSON
    path when the client accepts JSON)."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def run(request: Request) -> Response:
            fmt = ErrorFormat.PROBLEM if json_path and wants_json(request.headers.get("accept")) else ErrorFormat.TEXT
            try:
                return await endpoint(request)
            except errors.HsmkmError as exc:
                return error_response(status_for(exc), str(exc), fmt, challenge(exc))
            except store_errors.DATABASE_ERRORS as exc:
                # the driver's message may quote SQL and its parameters: only the class goes out
                err = store_errors.translate(exc)
                log(
                    f"hsmkm: error: database {type(err or exc).__name__} in {request.method} {one_line(request.url.path)}"
                )
                if isinstance(err, store_errors.Conflict):
                    return error_response(
                        HTTPStatus.CONFLICT, "a conflicting change was made meanwhile; try again", fmt
                    )
                return error_response(HTTPStatus.SERVICE_UNAVAILABLE, "the KM database is unavailable", fmt)
            except errors.CERTIFICATE_ERRORS:
                return error_response(HTTPStatus.BAD_REQUEST, "a malformed certificate", fmt)
            except Exception as exc:
                log(f"hsmkm: error: unexpected {type(exc).__name__} in {request.method} {one_line(request.url.path)}")
                return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, GENERIC_500, fmt)

        return run

    return wrap
