"""One access-log line per request: method, path, status, the EST address, duration.

Never a header's value, a query, a body, a code, key or PIN: the line is built only from the
method, the path, the status and what a route put in ``scope[NOTE]`` (the address it
authenticated). What a client sent is escaped, so nothing in a path drives a terminal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hsmkm.server.limits import App, Message, Receive, Scope, Send
from hsmkm.server.problems import one_line

NOTE = "hsmkm.note"
ADDRESS = "address"
MAX_PATH = 200

Log = Callable[[str], None]


def note(scope: Scope, key: str, value: str) -> None:
    """What a route adds to its request's log line."""
    notes: dict[str, Any] | None = scope.get(NOTE)
    if notes is not None:
        notes[key] = value


class AccessLog:
    """ASGI middleware writing one line per HTTP request when its answer is sent (or the
    client went away: status 0)."""

    def __init__(self, app: App, log: Log, listener: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.log = log
        self.listener = listener
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status = 0
        scope[NOTE] = {}

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.log(self.line(scope, status, self.clock() - start))

    def line(self, scope: Scope, status: int, seconds: float) -> str:
        client = scope.get("client") or ("-", 0)
        path = one_line(str(scope.get("path", "")))[:MAX_PATH] or "-"
        method = one_line(str(scope.get("method", "-")))[:16]
        address = scope[NOTE].get(ADDRESS)
        who = f" address={one_line(address)[:254]}" if address else ""
        return f"hsmkm: {self.listener} {client[0]} {method} {path} {status}{who} {seconds * 1000:.1f}ms"
