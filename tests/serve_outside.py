"""What a client outside the KM has for talking to ``hsmkm serve``: curl, openssl, a raw TLS
socket, and (for the before/after comparisons) a read-only look at the KM's database.

Nothing here imports hsmkm: the tests that use it act as an independent client or an
attacker would.
"""

from __future__ import annotations

import os
import select
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 60


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def curl(
    url: str,
    ca: Path,
    *args: str,
    user: str | None = None,
    body: Path | None = None,
    workdir: Path,
) -> Reply:
    """One curl request trusting only ``ca``. Credentials travel in a curl config read from
    stdin (``-K -``), never in argv; the body from a file (``--data-binary @FILE``)."""
    head = workdir / f"curl-headers-{os.getpid()}-{time.monotonic_ns()}"
    out = workdir / f"curl-body-{os.getpid()}-{time.monotonic_ns()}"
    argv = ["curl", "-sS", "--cacert", str(ca), "-D", str(head), "-o", str(out), "-w", "%{http_code}"]
    config = b""
    if user is not None:
        argv += ["-K", "-"]
        config = b'user = "' + user.encode() + b'"\n'
    if body is not None:
        argv += ["--data-binary", f"@{body}"]
    argv += [*args, url]
    proc = subprocess.run(argv, input=config, capture_output=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"curl failed: {proc.stderr.decode(errors='replace')}"
    headers = _headers(head.read_bytes().split(b"\r\n\r\n")[-2] if head.exists() else b"")
    reply = Reply(int(proc.stdout), headers, out.read_bytes() if out.exists() else b"")
    head.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    return reply


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            key = name.decode("latin-1").strip().lower()
            text = value.decode("latin-1").strip()
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def openssl(*args: str, input: bytes | None = None) -> bytes:
    """openssl's stdout; a failure fails the test with its stderr."""
    proc = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


@dataclass
class RawRequest:
    """Bytes sent as they are: the head, then body pieces, with a pause before each piece
    after the first (for a body that trickles in)."""

    head: bytes
    pieces: Sequence[bytes] = field(default_factory=tuple)
    pause: float = 0.0


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))  # the KM CA only; the name checked too


def send_raw(url: str, ca: Path, request: RawRequest, timeout: float = TIMEOUT) -> Reply:
    """One request over a new TLS connection, the answer read to the server's close."""
    host, port = host_port(url)
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        tls_context(ca).wrap_socket(sock, server_hostname=host) as tls,
    ):
        try:
            tls.sendall(request.head)
            for i, piece in enumerate(request.pieces):
                if i and request.pause:
                    time.sleep(request.pause)
                    if select.select([tls], [], [], 0)[0]:
                        break  # the server has answered (a deadline passed): stop trickling
                tls.sendall(piece)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server answered and closed early; read what it said
        return _read_reply(tls)


def _read_reply(tls: ssl.SSLSocket) -> Reply:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(tls)
        if not chunk:
            raise AssertionError(f"the server closed without an answer: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line = head.split(b"\r\n", 1)[0]
    status = int(status_line.split()[1])
    headers = _headers(head)
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(rest) < want:
            chunk = _recv(tls)
            if not chunk:
                break
            rest += chunk
        return Reply(status, headers, rest[:want])
    while True:
        chunk = _recv(tls)
        if not chunk:
            break
        rest += chunk
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return Reply(status, headers, rest)


def _recv(tls: ssl.SSLSocket) -> bytes:
    try:
        return tls.recv(65536)
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return b""


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


Rows = dict[str, list[tuple[Any, ...]]]


def db_rows(home: Path) -> Rows:
    """Every row of every table of the KM home's database, opened read-only."""
    conn = sqlite3.connect(f"file:{home / 'km.db'}?mode=ro", uri=True, timeout=30)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        conn.close()


def row_difference(before: Rows, after: Rows) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per table that changed: (rows gone, rows new)."""
    changed: dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {}
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, []), after.get(table, [])
        gone = [r for r in old if r not in new]
        added = [r for r in new if r not in old]
        if gone or added:
            changed[table] = (gone, added)
    return changed


def column(home: Path, table: str, name: str) -> int:
    """The position of column ``name`` in ``table``'s rows as ``db_rows`` gives them."""
    conn = sqlite3.connect(f"file:{home / 'km.db'}?mode=ro", uri=True, timeout=30)
    try:
        names = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    finally:
        conn.close()
    return names.index(name)
