"""One worker process of ``hsmkm serve``: started by the supervisor with its listening sockets
inherited, it reads its settings and the KM PIN from an inherited pipe (never argv, the
environment or a file), logs in to the KM once, serves the HTTPS and the plain HTTP listener
from one event loop, and logs out when it is told to stop (SIGTERM or SIGINT: stop accepting,
finish the requests in flight within the grace period) or its supervisor is gone.

``python -m hsmkm.server.worker FD``: FD is the read end of the settings pipe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvicorn

from hsmkm import errors
from hsmkm.clock import system_clock
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for
from hsmkm.server import app as server_app
from hsmkm.server.problems import one_line
from hsmkm.server.protocol import DEFAULT_HEADER_TIMEOUT, with_timeout
from hsmkm.server.runner import KmRunner

MAX_SETTINGS = 64 << 10
ACTOR = "est"
PARENT_POLL_S = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """What the supervisor tells a worker (the PIN travels beside it in the same pipe)."""

    home: str
    https_fd: int
    http_fd: int | None
    status_fd: int
    tls_cert: str
    tls_key: str
    graceful_timeout: int
    node: str
    read_timeout: float = DEFAULT_HEADER_TIMEOUT

    def encode(self, pin: str) -> bytes:
        return json.dumps({"settings": asdict(self), "pin": pin}).encode()

    @classmethod
    def decode(cls, data: bytes) -> tuple[WorkerSettings, str]:
        document = json.loads(data)
        return cls(**document["settings"]), str(document["pin"])


def read_pipe(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    with os.fdopen(fd, "rb", closefd=True) as pipe:
        while chunk := pipe.read(4096):
            size += len(chunk)
            if size > MAX_SETTINGS:
                raise errors.MalformedInput("worker settings too large")
            chunks.append(chunk)
    return b"".join(chunks)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the worker stops both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _log(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _config(app: Any, settings: WorkerSettings, tls: bool) -> uvicorn.Config:
    extra: dict[str, Any] = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key} if tls else {}
    return uvicorn.Config(
        app,
        http=with_timeout(settings.read_timeout),
        loop="asyncio",
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=settings.graceful_timeout,
        h11_max_incomplete_event_size=16 << 10,
        **extra,
    )


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What the event loop reports (a connection's failed handshake, a callback's error): one
    line, no traceback (it could show what a client sent)."""
    exc = context.get("exception")
    what = f" ({type(exc).__name__})" if exc is not None else ""
    _log(f"hsmkm: error: {one_line(str(context.get('message', 'event loop error')))}{what}")


def _status(fd: int, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())


async def serve(runner: KmRunner, settings: WorkerSettings) -> None:
    label = f"{settings.node} " if settings.node else ""
    limits = server_app.Limits(body_timeout=settings.read_timeout)
    https = _Server(
        _config(
            server_app.build(server_app.https_routes(runner, _log, system_clock), _log, f"{label}https", limits),
            settings,
            True,
        )
    )
    servers: list[tuple[_Server, socket.socket]] = [(https, socket.socket(fileno=settings.https_fd))]
    if settings.http_fd is not None:
        plain = _Server(
            _config(
                server_app.build(server_app.http_routes(runner, _log, system_clock), _log, f"{label}http", limits),
                settings,
                False,
            )
        )
        servers.append((plain, socket.socket(fileno=settings.http_fd)))
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_error)

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    parent = os.getppid()
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    while not all(server.started for server, _ in servers):
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    else:
        _status(settings.status_fd, {"ready": os.getpid()})
    while not all(t.done() for t in tasks):
        if os.getppid() != parent:  # the supervisor is gone: stop as if told to
            stop()
        await asyncio.wait(tasks, timeout=PARENT_POLL_S)
    for t in tasks:
        t.result()


def main(argv: list[str]) -> int:
    logging.basicConfig(format="hsmkm: %(name)s: %(message)s", level=logging.WARNING)
    # until the loop handles them: a stop asked during start-up is honoured right after it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings, pin = WorkerSettings.decode(read_pipe(int(argv[1])))
    root = Path(settings.home)
    try:
        runner = KmRunner(lambda: KeyManager.open(root, pin, actor=ACTOR, publisher=publisher_for(root)))
    except errors.HsmkmError as exc:
        _status(settings.status_fd, {"error": str(exc), "exit": int(exc.exit_code)})
        return int(exc.exit_code)
    try:
        asyncio.run(serve(runner, settings))
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
