"""Request limits for ``hsmkm serve`` as ASGI middleware: the application sees a whole body
within the cap or is never called; too large, too slow, or a lying Content-Length each get
their one-line 4xx."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm.server.limits import Message, Receive, RequestLimits, Scope, Send

CAP = 1000


class Recorder:
    """An ASGI app that reads its body and answers 200, remembering what it saw."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.after: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.calls.append(message["body"])
        assert message["more_body"] is False
        if scope.get("ask_again"):
            self.after.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/.well-known/est/simpleenroll",
        "headers": headers or [],
        **extra,
    }


def _run(
    scope: Scope, messages: list[Message], timeout: float = 5.0, hang: bool = False
) -> tuple[Recorder, list[Message], int]:
    app = Recorder()
    sent: list[Message] = []
    queue = list(messages)
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        if queue:
            return queue.pop(0)
        if hang:
            await asyncio.Event().wait()  # a client that stops sending
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(RequestLimits(app, CAP, timeout)(scope, receive, send))
    return app, sent, reads


def _chunks(body: bytes, cuts: list[int]) -> list[Message]:
    points = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    parts = [body[a:b] for a, b in itertools.pairwise(points)]
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


def _status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=CAP), st.lists(st.integers(0, 2 * CAP), max_size=8), st.booleans())
def test_a_body_within_the_cap_reaches_the_app_whole_and_once(body: bytes, cuts: list[int], declare: bool) -> None:
    headers = [(b"content-length", str(len(body)).encode())] if declare else []
    app, sent, _ = _run(_scope(headers, ask_again=True), _chunks(body, cuts))
    assert app.calls == [body] and app.after == ["http.disconnect"] and _status(sent) == 200


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=CAP + 1, max_size=3 * CAP), st.lists(st.integers(0, 3 * CAP), max_size=8))
def test_a_body_over_the_cap_is_413_and_the_app_is_never_called(body: bytes, cuts: list[int]) -> None:
    app, sent, _ = _run(_scope(), _chunks(body, cuts))
    assert app.calls == [] and _status(sent) == 413
    assert sent[1]["body"] == b"request body larger than 1000 octets\n"
    assert (b"content-type", b"text/plain; charset=utf-8") in sent[0]["headers"]


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    app, sent, reads = _run(_scope([(b"content-length", b"1001")]), _chunks(b"x" * 10, []))
    assert app.calls == [] and _status(sent) == 413 and reads == 0


@pytest.mark.parametrize("values", [[b"abc"], [b"-1"], [b"1, 2"], [b"3", b"4"], [b"9" * 19], [b"0x10"], [b""]])
def test_a_malformed_content_length_is_400(values: list[bytes]) -> None:
    app, sent, _ = _run(_scope([(b"content-length", v) for v in values]), _chunks(b"abc", []))
    assert app.calls == [] and _status(sent) == 400


@pytest.mark.parametrize("declared", [b"2", b"4", b"900"])
def test_a_body_that_does_not_match_its_content_length_is_400(declared: bytes) -> None:
    app, sent, _ = _run(_scope([(b"Content-Length", declared)]), _chunks(b"abc", []))
    assert app.calls == [] and _status(sent) == 400


def test_a_body_that_stops_coming_is_408() -> None:
    app, sent, _ = _run(
        _scope(), [{"type": "http.request", "body": b"MII", "more_body": True}], timeout=0.05, hang=True
    )
    assert app.calls == [] and _status(sent) == 408
    assert sent[1]["body"] == b"request body not received in time\n"


def test_a_client_gone_mid_body_reaches_nothing() -> None:
    app, sent, _ = _run(_scope(), [{"type": "http.request", "body": b"MII", "more_body": True}])
    assert app.calls == [] and sent == []


def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        seen.append((await receive())["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    asyncio.run(RequestLimits(lifespan_app, CAP, 1.0)({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan", "lifespan.startup"]
