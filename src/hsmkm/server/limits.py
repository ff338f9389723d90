"""Request limits as plain ASGI middleware, outside any framework: the body is read whole,
at most ``max_body`` octets within ``body_timeout`` seconds, before the application sees the
request; a body too large, too slow, or with a bad Content-Length gets a one-line
``text/plain`` 4xx (as RFC 7030 lets an EST server explain an error) and the application is never called.

Reading the body first means no handler sees a partial body, and no framework turns a limit
into a 500 (Starlette's error middleware answers 500 to any exception that a handler's body
read would raise). EST bodies are small, so holding them whole costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from enum import IntEnum
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Status(IntEnum):
    BAD_REQUEST = 400
    REQUEST_TIMEOUT = 408
    CONTENT_TOO_LARGE = 413


class _Refused(Exception):
    def __init__(self, status: Status, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _Disconnected(Exception):
    pass


class RequestLimits:
    """Wraps an ASGI application; HTTP requests reach it with their whole body or not at all."""

    def __init__(self, app: App, max_body: int, body_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                raise _Refused(Status.CONTENT_TOO_LARGE, f"request body larger than {self.max_body} octets")
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await self._read(receive, declared)
            except TimeoutError:
                raise _Refused(Status.REQUEST_TIMEOUT, "request body not received in time") from None
        except _Refused as refused:
            await _answer(send, refused)
            return
        except _Disconnected:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, declared: int | None) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            if message["type"] != "http.request":
                continue
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_body:
                raise _Refused(Status.CONTENT_TOO_LARGE, f"request body larger than {self.max_body} octets")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if declared is not None and size != declared:
            raise _Refused(Status.BAD_REQUEST, "request body shorter than its Content-Length")
        return b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    values = {bytes(v).strip() for k, v in scope.get("headers", []) if bytes(k).lower() == b"content-length"}
    if not values:
        return None
    if len(values) != 1:
        raise _Refused(Status.BAD_REQUEST, "conflicting Content-Length headers")
    (value,) = values
    if not value.isdigit() or len(value) > 18:
        raise _Refused(Status.BAD_REQUEST, "malformed Content-Length")
    return int(value)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the whole body once, then passes on (to see a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, refused: _Refused) -> None:
    text = (refused.text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": int(refused.status),
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(text)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": text, "more_body": False})
