"""kill -9 of a ``hsmkm serve`` worker in the middle of serverkeygen.

strace attaches to the worker and kills it (SIGKILL on entry to the Nth call of a syscall,
so the call itself never happens) at points across one serverkeygen request: its writes and
syncs on the KM database and its token files (the points learnt from an untouched request
traced the same way), and its first write to the client's socket (the response lost after
the commit). After each kill: the user has an archived key and its encryption certificate,
or neither; the audit log verifies; and once the supervisor has started a new worker, the
same request with the same code succeeds with a certificate whose key is archived — never a
second encryption certificate.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import hsmkm
from hsmkm.est import certsonly, keypart, multipart
from hsmkm.est import csr as est_csr
from serve_outside import RawRequest, Reply, host_port, send_raw
from server_harness import RunningServer, running_server

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by scripts/setup")

EST = "/.well-known/est"
FILE_SYSCALLS = ("pwrite64", "write", "fdatasync", "fsync", "ftruncate")
SWEEP_ALL = "HSMKM_FAULT_SERVE_ALL"  # set by scripts/fault-serve
_TRACE_LINE = re.compile(r"^(\d+)\s+(\w+)\((\d+)<([^>]*)>")


@dataclass(frozen=True)
class Point:
    syscall: str
    nth: int  # within the thread that makes the call (strace counts per traced thread)
    paths: tuple[str, ...] = ()  # the -P filter: only these files' calls are counted; none: all
    what: str = ""
    after_commit: bool = False  # the kill lands after the commit: the user must have both

    def __str__(self) -> str:
        return f"{self.syscall}#{self.nth} {self.what}"


@dataclass
class Keygen:
    """One user's serverkeygen request, kept so that the retry sends the very same one."""

    email: str
    code: str
    key_id: bytes
    body: bytes


@dataclass
class Rig:
    server: RunningServer
    serial: int = 0

    @property
    def home(self) -> Path:
        return self.server.home

    def keygen(self) -> Keygen:
        self.serial += 1
        email = f"kill{self.serial}@example.com"
        code = hsmkm("--json", "user", "add", email, home=self.home).json()["code"]
        key_id = os.urandom(16)
        key = ec.generate_private_key(ec.SECP256R1())
        body = base64.encodebytes(est_csr.build(key, email, key_id))  # as hsmkm's client makes it
        return Keygen(email, code, key_id, body)

    def request(self, kg: Keygen) -> RawRequest:
        host, port = host_port(self.server.url)
        auth = base64.b64encode(f"{kg.email}:{kg.code}".encode()).decode()
        head = (
            f"POST {EST}/serverkeygen HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/pkcs10\r\n"
            f"Content-Length: {len(kg.body)}\r\n\r\n"
        )
        return RawRequest(head.encode(), (kg.body,))

    def send(self, kg: Keygen) -> Reply | None:
        """The answer, or None when the connection died without one."""
        try:
            return send_raw(self.server.url, self.server.ca_pem, self.request(kg), timeout=60)
        except (AssertionError, ConnectionError, OSError):
            return None

    def worker(self) -> int:
        pids = self.server.worker_pids()
        assert len(pids) == 1, pids
        return pids[0]

    def warm(self) -> int:
        """The live worker, once it answers (the supervisor may still be starting it)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = self.server.worker_pids()
            if len(pids) == 1 and _alive(pids[0]):
                try:
                    reply = send_raw(self.server.url, self.server.ca_pem, _get(self.server, "/ca.crt"), timeout=10)
                    if reply.status == 200:
                        return pids[0]
                except (AssertionError, OSError):
                    pass
            time.sleep(0.2)
        raise AssertionError("no worker answers after the kill")

    def db_paths(self) -> tuple[str, ...]:
        db = self.home / "km.db"
        return (str(db), f"{db}-wal", f"{db}-journal")

    def token_files(self) -> tuple[str, ...]:
        return tuple(str(p) for p in sorted((self.home / "softhsm" / "tokens").rglob("*")) if p.is_file())


def _get(server: RunningServer, path: str) -> RawRequest:
    host, port = host_port(server.url)
    return RawRequest(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    home = tmp_path_factory.mktemp("serve-kill") / "home"
    hsmkm("init", "--ca-subject", "CN=Kill CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    with running_server(home, workers=1) as server:
        yield Rig(server)


class Tracer:
    """strace attached to a worker (it follows the worker's threads), stopped by us at exit."""

    def __init__(self, pid: int, syscalls: tuple[str, ...], paths: tuple[str, ...], log: Path, inject: str = ""):
        argv = ["strace", "-f", "-y", "-p", str(pid), "-o", str(log), "-e", "trace=" + ",".join(syscalls)]
        for path in paths:
            argv += ["-P", path]
        if inject:
            argv += ["-e", f"inject={inject}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode(errors="replace")
        assert "attached" in line, line  # strace says so once it traces the worker

    def stop(self, killing: bool = False) -> None:
        """Detach (SIGINT). With ``killing``, first give strace the time to see the worker die
        and write its last lines: it exits by itself when its tracee is gone."""
        if killing:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # detach, the worker runs on
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # a tracer that dies detaches from its tracees
            self.proc.wait(30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def learn_points(rig: Rig, log: Path) -> list[Point]:
    """Every write and sync on the database and token files in one untouched serverkeygen,
    numbered as strace's injection counts them (per thread, among the -P files)."""
    pid = rig.warm()
    paths = rig.db_paths() + rig.token_files()
    tracer = Tracer(pid, FILE_SYSCALLS, paths, log)
    try:
        reply = rig.send(rig.keygen())
    finally:
        tracer.stop()
    assert reply is not None and reply.status == 200, reply
    counts: dict[tuple[str, str], int] = {}
    points: list[Point] = []
    for line in log.read_text(errors="replace").splitlines():
        m = _TRACE_LINE.match(line)
        if m is None:
            continue
        tid, name, _, path = m.groups()
        counts[tid, name] = counts.get((tid, name), 0) + 1
        points.append(Point(name, counts[tid, name], paths, path.replace(str(rig.home) + "/", "")))
    assert any(p.what.startswith("km.db") for p in points), points  # the request commits to the database
    return points


def smoke_points(points: list[Point]) -> list[Point]:
    """A few points spread over the request: the first and the last database write, one in
    between, the first sync, and the first token-file write if any."""
    db_writes = [p for p in points if p.what.startswith("km.db") and p.syscall in ("pwrite64", "write")]
    chosen = [db_writes[0], db_writes[len(db_writes) // 2], db_writes[-1]]
    chosen += [p for p in points if p.syscall in ("fdatasync", "fsync")][:1]
    chosen += [p for p in points if p.what.startswith("softhsm") and p.syscall in ("write", "pwrite64")][:1]
    return list(dict.fromkeys(chosen))


def learn_response_point(rig: Rig, log: Path) -> Point:
    """The worker's first send on the client's connection after the request's last database
    write (or, if it writes after answering, its last send there): killed there, the answer
    is lost after the commit. strace numbers sendto per thread among all its calls (no -P:
    sockets are not files), and the token thread's wake-ups of the event loop are sends too,
    so the point is the connection's own thread's ordinal."""
    pid = rig.warm()
    tracer = Tracer(pid, ("sendto", "pwrite64"), (), log)
    try:
        reply = rig.send(rig.keygen())
    finally:
        tracer.stop()
    assert reply is not None and reply.status == 200, reply
    counts: dict[str, int] = {}
    sends: list[tuple[int, Point]] = []
    client: tuple[str, str] | None = None  # (thread, fd) of the first send: the TLS handshake
    last_db_write = -1
    for i, line in enumerate(log.read_text(errors="replace").splitlines()):
        m = _TRACE_LINE.match(line)
        if m is None:
            continue
        tid, name, fd, path = m.groups()
        if name == "pwrite64" and path.startswith(str(rig.home / "km.db")):
            last_db_write = i
        elif name == "sendto":
            counts[tid] = counts.get(tid, 0) + 1
            client = client or (tid, fd)
            if (tid, fd) == client:
                sends.append((i, Point("sendto", counts[tid], (), "a send to the client after the commit", True)))
    assert sends and last_db_write >= 0, log.read_text()[-2000:]
    after = [p for i, p in sends if i > last_db_write]
    return after[0] if after else sends[-1][1]


def db(home: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{home / 'km.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def encryption_state(home: Path, email: str) -> tuple[list[str], list[str]]:
    """The user's encryption certificates' serials and their archive records' serials."""
    conn = db(home)
    try:
        user = conn.execute("SELECT id FROM users WHERE email = ?", (email,)).fetchone()
        certs = [
            r["serial"]
            for r in conn.execute(
                "SELECT serial FROM certificates WHERE user_id = ? AND kind = 'encrypt'", (user["id"],)
            )
        ]
        archived = [
            r["cert_serial"] for r in conn.execute("SELECT cert_serial FROM archive WHERE user_id = ?", (user["id"],))
        ]
    finally:
        conn.close()
    return sorted(certs), sorted(archived)


def opened(rig: Rig, kg: Keygen, reply: Reply) -> str:
    """The serial of the encryption certificate in a serverkeygen answer, after checking, as
    the client does, that its key part opens with the code and holds that certificate's key."""
    parts = multipart.parse(reply.header("content-type"), reply.body)
    (cert,) = certsonly.decode(parts.certs_part)
    ca = x509.load_pem_x509_certificate(rig.server.ca_pem.read_bytes())
    key = keypart.open_key(parts.key_part, keypart.kek(kg.code, kg.key_id), kg.key_id, ca)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    return f"{cert.serial_number:040x}"  # as the database keys it


def kill_at(rig: Rig, point: Point, log: Path) -> None:
    kg = rig.keygen()
    pid = rig.warm()
    syscalls = (point.syscall,)
    tracer = Tracer(pid, syscalls, point.paths, log, inject=f"{point.syscall}:signal=SIGKILL:when={point.nth}")
    try:
        reply = rig.send(kg)
    finally:
        tracer.stop(killing=True)
    trace = log.read_text(errors="replace")
    assert "+++ killed by SIGKILL +++" in trace, f"{point}: not reached, the worker answered {reply}"
    assert reply is None or reply.status >= 500 or reply.status == 200, reply
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)

    # nothing half-done: an archived key and its certificate, or neither
    certs, archived = encryption_state(rig.home, kg.email)
    assert certs == archived, f"{point}: certificates {certs}, archive records {archived}"
    assert len(certs) <= 1, f"{point}: {certs}"
    if point.after_commit:
        assert len(certs) == 1, f"{point}: the answer was being sent, yet nothing is recorded"
    assert hsmkm("audit", "verify", home=rig.home, check=False).returncode == 0
    assert hsmkm("status", home=rig.home, check=False).returncode == 0

    # the retry, same code, same request, once a new worker serves
    rig.warm()
    again = rig.send(kg)
    assert again is not None and again.status == 200, f"{point}: the retry got {again}"
    serial = opened(rig, kg, again)
    after_certs, after_archived = encryption_state(rig.home, kg.email)
    assert after_certs == after_archived == [serial], (point, serial, after_certs, after_archived)
    if certs:
        assert certs == after_certs, f"{point}: a second encryption certificate after the retry"


@pytest.mark.slow
def test_kill_during_serverkeygen_leaves_all_or_nothing_and_the_retry_succeeds(rig: Rig, tmp_path: Path) -> None:
    learnt = learn_points(rig, tmp_path / "learn.trace")
    # the suite's smoke: a few points; scripts/fault-serve sweeps every one
    chosen = learnt if os.environ.get(SWEEP_ALL) else smoke_points(learnt)
    points = [*chosen, learn_response_point(rig, tmp_path / "learn-send.trace")]
    assert len(points) >= 4
    for i, point in enumerate(points):
        kill_at(rig, point, tmp_path / f"kill-{i}.trace")
