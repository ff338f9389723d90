"""A cheap HTTP(S) load generator for the serve bench: one new TCP (and TLS) connection per
request, HTTP/1.1 with ``Connection: close`` written and read on a raw socket, and N client
threads pulling jobs from one list.

It shares the machine's cores with the server, so it does as little as it can: no HTTP
library, no session resumption (Python's ssl resumes only when handed a session, and none is
ever handed), headers parsed only as far as the status line, Content-Type and Content-Length.
The TLS handshake runs in OpenSSL with the GIL released, so the threads overlap there.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, cast

MAX_RESPONSE = 4 << 20
_HEAD_END = b"\r\n\r\n"


class LoadError(Exception):
    """A request failed or was answered with a status the bench did not expect."""


@dataclass(frozen=True)
class Target:
    """Where requests go: a host and port, and the TLS context (None for plain HTTP)."""

    host: str
    port: int
    tls: ssl.SSLContext | None


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased; only the last of a repeated header
    body: bytes


def client_context(ca_pem: Path) -> ssl.SSLContext:
    """TLS trusting only the certificate in ``ca_pem`` (the KM CA), the host name checked, no
    session tickets asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # From a file, not cadata: Python judges the end of cadata by OpenSSL's error queue, which
    # the token library may have left an unrelated error on in this thread.
    ctx.load_verify_locations(cafile=str(ca_pem))
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def request(
    target: Target, method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
) -> Response:
    """One request on a connection of its own (connect, handshake, send, read, close)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.host}:{target.port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    try:
        raw = socket.create_connection((target.host, target.port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = raw if target.tls is None else target.tls.wrap_socket(raw, server_hostname=target.host)
        with sock:  # wrap_socket detached ``raw``: closing the wrapper closes the connection
            sock.sendall(wire)
            return _read(sock)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise LoadError(f"{method} {path}: {exc}") from exc


def _read(sock: socket.socket) -> Response:
    buf = b""
    while _HEAD_END not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise LoadError("connection closed before the response headers")
        buf += chunk
        if len(buf) > MAX_RESPONSE:
            raise LoadError("response headers too large")
    head, _, rest = buf.partition(_HEAD_END)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise LoadError(f"bad status line {status_line!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    want = int(length) if length is not None else MAX_RESPONSE
    chunks = [rest]
    got = len(rest)
    while got < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    body = b"".join(chunks)
    if length is not None and len(body) != want:
        raise LoadError(f"a body of {len(body)} octets, Content-Length {want}")
    return Response(int(parts[1]), headers, body)


J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class Run(Generic[R]):
    """What one drive produced: wall seconds, each job's latency and result (in job order),
    and the load generator's own CPU seconds (this process, all threads)."""

    seconds: float
    latencies: list[float]
    results: list[R]
    client_cpu: float


def drive(clients: int, jobs: Sequence[J], fn: Callable[[J], R]) -> Run[R]:
    """Run ``fn`` over ``jobs`` from ``clients`` threads at once; the first failure is raised
    after every thread has stopped."""
    latencies = [0.0] * len(jobs)
    results: list[R | None] = [None] * len(jobs)
    failures: list[BaseException] = []
    next_job = iter(range(len(jobs)))
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        start.wait()
        while not failures:
            with lock:
                i = next(next_job, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                results[i] = fn(jobs[i])
            except BaseException as exc:  # reported to the caller below
                failures.append(exc)
                return
            latencies[i] = time.perf_counter() - t

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    cpu = time.process_time()
    t0 = time.perf_counter()
    start.wait()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    if failures:
        raise failures[0]
    return Run(seconds, latencies, cast(list[R], results), cpu)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
