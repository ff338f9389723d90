"""The ASGI applications of one worker: the HTTPS one (everything) and the plain HTTP one (the
CA certificate and the CRLs only, as the certificates' ``http://`` distribution points name
them), each wrapped in the access log, the request limits and a last shield."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from hsmkm.clock import Clock
from hsmkm.est import csr, transfer
from hsmkm.server.accesslog import AccessLog, Log
from hsmkm.server.directory_routes import DirectoryRoutes
from hsmkm.server.distribution import Distribution, DistributionPath
from hsmkm.server.est_routes import EstRoutes
from hsmkm.server.guard import guarded
from hsmkm.server.limits import App, Message, Receive, RequestLimits, Scope, Send
from hsmkm.server.problems import GENERIC_500, TEXT_PLAIN, error_response, one_line
from hsmkm.server.runner import KmRunner

EST = "/.well-known/est"
MAX_BODY = transfer.encoded_limit(csr.MAX_CSR)  # a CSR of 64 KiB in base64
BODY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Limits:
    max_body: int = MAX_BODY
    body_timeout: float = BODY_TIMEOUT


async def health(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def _distribution_routes(dist: Distribution, log: Log) -> list[BaseRoute]:
    serve = guarded(log)(dist.serve)
    return [Route(p.value, serve, methods=["GET"]) for p in DistributionPath]


def https_routes(runner: KmRunner, log: Log, clock: Clock) -> list[BaseRoute]:
    est = EstRoutes(runner)
    directory = DirectoryRoutes(runner)
    g = guarded(log)
    return [
        Route("/hsmkm/health", health, methods=["GET"]),
        Route(f"{EST}/cacerts", g(est.cacerts), methods=["GET"]),
        Route(f"{EST}/csrattrs", g(est.csrattrs), methods=["GET"]),
        Route(f"{EST}/simpleenroll", g(est.simpleenroll), methods=["POST"]),
        Route(f"{EST}/serverkeygen", g(est.serverkeygen), methods=["POST"]),
        Route("/hsmkm/est/keyhistory", g(est.keyhistory), methods=["POST"]),
        Route("/directory/{email}", guarded(log, json_path=True)(directory.lookup), methods=["GET"]),
        *_distribution_routes(Distribution(runner, clock), log),
    ]


def http_routes(runner: KmRunner, log: Log, clock: Clock) -> list[BaseRoute]:
    return _distribution_routes(Distribution(runner, clock), log)


class Shield:
    """The outermost layer: an exception that got past every route's guard (a bug) is one log
    line and, if no answer was started, a generic 500 — never a traceback to the client."""

    def __init__(self, app: App, log: Log) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            self.log(f"hsmkm: error: unexpected {type(exc).__name__} in {one_line(str(scope.get('path', '')))}")
            if scope["type"] == "http" and not started:
                body = (GENERIC_500 + "\n").encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": int(HTTPStatus.INTERNAL_SERVER_ERROR),
                        "headers": [
                            (b"content-type", TEXT_PLAIN.encode()),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, as one line like every other error (405 names Allow)."""
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    return error_response(status, status.phrase, headers=exc.headers)


async def _generic_500(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(GENERIC_500 + "\n", int(HTTPStatus.INTERNAL_SERVER_ERROR))


def build(routes: Sequence[BaseRoute], log: Log, listener: str, limits: Limits = Limits()) -> App:
    """One listener's application: access log ( shield ( limits ( Starlette ) ) )."""
    # Starlette answers an exception that reaches it itself, then raises it on to the shield
    starlette = Starlette(routes=list(routes), exception_handlers={HTTPException: _http_error, Exception: _generic_500})
    inner: App = RequestLimits(starlette, limits.max_body, limits.body_timeout)
    return AccessLog(Shield(inner, log), log, listener)
