"""A real ``hsmkm serve`` in a subprocess, for tests: ``running_server(home)`` starts it on free
loopback ports, waits until ``/hsmkm/health`` answers, and stops it (SIGTERM, then kill) at
exit; ``RunningServer.request`` speaks HTTPS to it (a new connection each time, trusting only
the KM CA) or plain HTTP.

The server's stderr (its "serving" lines and the access log) goes to a file: ``log_text()``."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import HSMKM, hsmkm

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class RunningServer:
    url: str  # https://127.0.0.1:PORT
    http_url: str | None  # http://127.0.0.1:PORT, with http=True
    ca_pem: Path  # the KM CA certificate, PEM
    home: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    codes: dict[str, str] = field(default_factory=dict)  # km_server: each user's enrollment code
    _final_log: str | None = None  # the log as it was when the server's folder was removed

    def worker_pids(self) -> list[int]:
        """The live worker processes (children of the supervisor)."""
        return children_of(self.proc.pid)

    def log_text(self) -> str:
        """The server's stderr so far (after the block: all of it)."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        plain: bool = False,
        timeout: float = 60.0,
    ) -> Answer:
        """One request on a new connection: HTTPS (or, with ``plain``, the HTTP listener)."""
        base = self.http_url if plain else self.url
        assert base is not None, "the server has no plain HTTP listener"
        host, port = base.split("//")[1].rsplit(":", 1)
        conn: http.client.HTTPConnection
        if plain:
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        else:
            conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=self.ssl_context())
        all_headers = dict(headers or {})
        if auth is not None:
            all_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: object) -> Answer:
        return self.request("GET", path, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in time; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for pid in self.worker_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (read from /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def ca_pem_of(home: Path, into: Path) -> Path:
    der = (home / "pub" / "ca.crt").read_bytes()
    into.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    return into


def server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HSMKM_")}


def _serving_urls(log: Path) -> tuple[str | None, str | None]:
    https = plain = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("hsmkm: serving https://"):
            https = line.split()[-1]
        elif line.startswith("hsmkm: serving http://"):
            plain = line.split()[-1]
    return https, plain


@contextlib.contextmanager
def running_server(
    home: Path, *, workers: int = 1, http: bool = False, extra_args: Sequence[str] = ()
) -> Iterator[RunningServer]:
    """``hsmkm serve`` on the KM at ``home``, on free loopback ports, until the block ends."""
    with tempfile.TemporaryDirectory(prefix="hsmkm-serve-") as tmp:
        folder = Path(tmp)
        log = folder / "server.log"
        argv = [HSMKM, "--home", str(home), "serve", "--listen", "127.0.0.1:0", "--workers", str(workers)]
        if http:
            argv += ["--listen-http", "127.0.0.1:0"]
        argv += list(extra_args)
        with log.open("wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=server_env()
            )
        server = RunningServer("", None, ca_pem_of(home, folder / "ca.pem"), home, proc, log)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                https, plain = _serving_urls(log)
                if https is not None and (plain is not None or not http):
                    break
                if proc.poll() is not None:
                    raise AssertionError(f"hsmkm serve exited {proc.returncode}:\n{server.log_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"hsmkm serve did not start:\n{server.log_text()}")
                time.sleep(0.05)
            server.url, server.http_url = https, plain
            while server.get("/hsmkm/health").status != 200:
                if time.monotonic() > deadline:
                    raise AssertionError(f"hsmkm serve is not healthy:\n{server.log_text()}")
                time.sleep(0.05)
            yield server
        finally:
            server.stop()
            server._final_log = server.log_text()


def init_km(home: Path, users: Sequence[str] = ("alice@example.com",)) -> dict[str, str]:
    """A fresh embedded-default KM (P-256 CA) at ``home`` with ``users`` added; their codes."""
    hsmkm("init", "--ca-subject", "CN=Serve Test CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    return {email: hsmkm("--json", "user", "add", email, home=home).json()["code"] for email in users}
