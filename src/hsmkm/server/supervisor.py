"""The supervisor of ``hsmkm serve``: binds the listening sockets, starts N worker processes
that inherit them (each told its settings and the KM PIN through a pipe of its own), starts a
new worker when one dies, and on SIGTERM or SIGINT stops them gracefully and returns.

uvicorn's own multi-process supervisor runs one server (one TLS setting) per worker and passes
it nothing but its configuration; hsmkm's workers serve the HTTPS and the plain HTTP listener
from one event loop and need the PIN handed over without argv or the environment, so the
supervision is here: small, and nothing but processes and pipes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from hsmkm import errors
from hsmkm.server.worker import WorkerSettings

START_TIMEOUT_S = 120.0
KILL_AFTER_S = 5.0
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)
POLL_S = 0.2
BACKLOG = 1024


class Scheme(str, Enum):
    HTTPS = "https"
    HTTP = "http"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT`` (an IPv6 address in brackets)."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise errors.BadInput(f"not HOST:PORT: {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host, int(port))

    def url(self, scheme: Scheme) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme.value}://{host}:{self.port}"


def bind(endpoint: Endpoint) -> socket.socket:
    """A listening TCP socket on ``endpoint`` (port 0: one the system picks)."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise errors.BadInput(f"cannot listen on {endpoint.host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise errors.Unreachable(f"cannot listen on {endpoint.host}:{endpoint.port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def bound_endpoint(sock: socket.socket) -> Endpoint:
    host, port = sock.getsockname()[:2]
    return Endpoint(str(host), int(port))


def _worker_error(message: dict[str, object]) -> errors.HsmkmError:
    """A worker's failure at start as the error of the exit code it reported."""
    text = str(message["error"])
    if message.get("exit") == int(errors.ExitCode.UNREACHABLE):
        return errors.Unreachable(text)
    return errors.BadInput(text)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    status_fd: int
    ready: bool = False
    buffer: bytes = b""


@dataclass
class Supervisor:
    """N workers on the given sockets; ``log`` writes one line (stderr)."""

    settings: WorkerSettings  # its fds are filled in per worker
    pin: str
    https: socket.socket
    http: socket.socket | None
    count: int
    log: Callable[[str], None]
    env: Mapping[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    _stopping: bool = False
    _deaths: int = 0
    _next_start: float = 0.0

    def _spawn(self) -> Worker:
        settings_r, settings_w = os.pipe()
        status_r, status_w = os.pipe()
        fds = [settings_r, status_w, self.https.fileno()]
        if self.http is not None:
            fds.append(self.http.fileno())
        settings = replace(
            self.settings,
            https_fd=self.https.fileno(),
            http_fd=None if self.http is None else self.http.fileno(),
            status_fd=status_w,
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hsmkm.server.worker", str(settings_r)],
                pass_fds=fds,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(settings_r)
            os.close(status_w)
        try:
            os.write(settings_w, settings.encode(self.pin))  # far below a pipe's buffer
        except OSError:
            pass  # it died at once: seen as a dead worker
        finally:
            os.close(settings_w)
        os.set_blocking(status_r, False)
        worker = Worker(proc, status_r)
        self.workers.append(worker)
        return worker

    def _read_status(self, worker: Worker) -> list[dict[str, object]]:
        messages: list[dict[str, object]] = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(worker.status_fd, 4096):
                worker.buffer += chunk
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    messages.append(message)
        return messages

    def _forget(self, worker: Worker) -> None:
        with contextlib.suppress(OSError):
            os.close(worker.status_fd)
        self.workers.remove(worker)

    def start(self) -> None:
        """Start the workers and wait until each is serving; the first one that fails (a wrong
        PIN, an unreadable key file) stops the others and raises its error."""
        for _ in range(self.count):
            self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if time.monotonic() > deadline:
                self.stop()
                raise errors.Unreachable("the workers did not start in time")
            select.select([w.status_fd for w in self.workers if not w.ready], [], [], POLL_S)
            for worker in list(self.workers):
                for message in self._read_status(worker):
                    if "ready" in message:
                        worker.ready = True
                    elif "error" in message:
                        self.stop()
                        raise _worker_error(message)
                if worker.proc.poll() is not None and not worker.ready:
                    for message in self._read_status(worker):
                        if "error" in message:
                            self.stop()
                            raise _worker_error(message)
                    self.stop()
                    raise errors.Unreachable(f"a worker exited at start (status {worker.proc.returncode})")

    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self._stopping = True

    def run(self) -> None:
        """Keep N workers running until ``request_stop`` (a signal handler) is called."""
        while not self._stopping:
            live = [w for w in self.workers if w.proc.poll() is None]
            with contextlib.suppress(InterruptedError):
                select.select([w.status_fd for w in live], [], [], POLL_S)
            for worker in list(self.workers):
                for message in self._read_status(worker):
                    if "ready" in message:
                        worker.ready = True
                        self._deaths = 0
                        self.log(f"hsmkm: worker {worker.proc.pid} serving")
                    elif "error" in message:
                        self.log(f"hsmkm: error: worker {worker.proc.pid}: {message['error']}")
                code = worker.proc.poll()
                if code is not None and not self._stopping:
                    how = f"signal {-code}" if code < 0 else f"status {code}"
                    self.log(f"hsmkm: worker {worker.proc.pid} exited ({how}); starting another")
                    self._forget(worker)
                    self._deaths += 1
                    delay = RESTART_BACKOFF_S[min(self._deaths, len(RESTART_BACKOFF_S)) - 1]
                    self._next_start = max(self._next_start, time.monotonic() + delay)
            if not self._stopping and len(self.workers) < self.count and time.monotonic() >= self._next_start:
                self._spawn()
        self.stop()

    def stop(self) -> None:
        """SIGTERM to every worker (each stops accepting and finishes its requests within the
        grace period), SIGKILL to any still there after it; the sockets closed."""
        self._stopping = True
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        self.https.close()
        if self.http is not None:
            self.http.close()
        deadline = time.monotonic() + self.settings.graceful_timeout + KILL_AFTER_S
        for worker in list(self.workers):
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"hsmkm: worker {worker.proc.pid} did not stop in time; killed")
                worker.proc.kill()
                worker.proc.wait()
            self._forget(worker)
