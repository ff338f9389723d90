"""``hsmkm serve`` as processes: it starts N workers behind one supervisor, with the embedded
default's TLS certificate issued by the KM CA for the listen names (a 0600 key in HOME/tls/,
reused while it fits); bad settings are one line and exit 2; the ``km_server`` fixture gives a
running server with a user's code."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import hsmkm
from server_harness import RunningServer, init_km, running_server


def server_certificate(server: RunningServer) -> x509.Certificate:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)), ca_certs=str(server.ca_pem))
    return x509.load_pem_x509_certificate(pem.encode())


def test_km_server_gives_a_running_server_and_the_users_code(km_server: RunningServer) -> None:
    assert km_server.get("/hsmkm/health").status == 200
    assert set(km_server.codes) == {"alice@example.com"}
    assert len(km_server.worker_pids()) == 1
    assert km_server.url.startswith("https://127.0.0.1:")
    assert km_server.http_url is None


def test_the_embedded_tls_certificate_comes_from_the_km_ca_for_the_listen_address(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_km(home)
    with running_server(home, workers=2) as server:
        assert len(server.worker_pids()) == 2
        cert = server_certificate(server)
        ca = x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        key_file = home / "tls" / "server.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((home / "tls").stat().st_mode) == 0o700
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        assert key.public_key() == cert.public_key()
        first = (home / "tls" / "server.crt").read_bytes()
        hsmkm("audit", "verify", home=home)  # the issuance is an audited change; the chain holds
    # the same names: reused; another name: issued afresh
    with running_server(home) as again:
        assert server_certificate(again) == cert
        assert (home / "tls" / "server.crt").read_bytes() == first
    with running_server(home, extra_args=["--server-name", "127.0.0.1", "--server-name", "km.example.test"]) as renamed:
        other = server_certificate(renamed)
        assert other != cert
        names = other.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["km.example.test"]


def test_an_operators_own_certificate_is_used(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_km(home)
    own = tmp_path / "own"
    with running_server(home) as server:  # borrow a pair the KM CA made, copied elsewhere
        cert = server_certificate(server)
    own.mkdir()
    (own / "c.pem").write_bytes((home / "tls" / "server.crt").read_bytes())
    (own / "k.pem").write_bytes((home / "tls" / "server.key").read_bytes())
    os.chmod(own / "k.pem", 0o600)
    for f in (home / "tls").iterdir():
        f.unlink()
    with running_server(home, extra_args=["--tls-cert", str(own / "c.pem"), "--tls-key", str(own / "k.pem")]) as s:
        assert server_certificate(s) == cert
    assert not (home / "tls" / "server.crt").exists()


@pytest.fixture(scope="module")
def plain_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("serve-cli") / "home"
    init_km(home)
    return home


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--base-url", "http://elsewhere.example/"], "is not the KM's base URL"),
        (["--listen", "no-port"], "not HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "not HOST:PORT"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (["--listen", "0.0.0.0:0"], "--server-name"),
        (["--pin-source", "env:NO_SUCH_VARIABLE"], "NO_SUCH_VARIABLE"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(plain_home: Path, args: list[str], says: str) -> None:
    run = hsmkm("serve", "--listen", "127.0.0.1:0", *args, home=plain_home, check=False)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsmkm: error: ") and says in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_a_wrong_pin_is_refused_before_any_worker_starts(plain_home: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "pin"
    wrong.write_text("000000\n")
    run = hsmkm("serve", "--listen", "127.0.0.1:0", "--pin-source", f"file:{wrong}", home=plain_home, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("hsmkm: error: ") and len(run.stderr.splitlines()) == 1


def test_the_matching_base_url_is_accepted(plain_home: Path) -> None:
    base = json.loads((plain_home / "km.json").read_text())["base_url"]
    with running_server(plain_home, extra_args=["--base-url", base.rstrip("/")]) as server:
        assert server.get("/hsmkm/health").status == 200


# --- processes: worker death, SIGTERM, the supervisor's death ---------------------------------


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def tls_connection(server: RunningServer) -> ssl.SSLSocket:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=60)
    return server.ssl_context().wrap_socket(raw, server_hostname=host)


def read_response(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(plain_home: Path) -> None:
    home = plain_home
    with running_server(home, workers=2) as server:
        before = server.worker_pids()
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        wait_for(lambda: not alive(before[0]), "the killed worker is gone")
        for _ in range(10):  # the other worker answers meanwhile; new connections never fail
            assert server.get("/hsmkm/health").status == 200
        wait_for(lambda: len(server.worker_pids()) == 2, "a new worker started")
        after = server.worker_pids()
        assert before[0] not in after and before[1] in after
        wait_for(lambda: "serving" in server.log_text().split(f"worker {before[0]} exited")[-1], "it serves")
        assert f"hsmkm: worker {before[0]} exited (signal 9); starting another" in server.log_text()
        # killed again and again, one by one: it always comes back
        for pid in after:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda pid=pid: pid not in server.worker_pids() and len(server.worker_pids()) == 2, "replaced")  # type: ignore[misc]
        wait_for(lambda: server.get("/hsmkm/health").status == 200, "healthy")


def test_sigterm_finishes_the_request_in_flight_then_exits_0(plain_home: Path) -> None:
    home = plain_home
    with running_server(home) as server:
        body = b"bm90IGEgQ1NS" * 10  # base64 of no CSR: answered 400 without asking the KM
        conn = tls_connection(server)
        head = (
            "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n"
            f"Authorization: Basic YWxpY2VAZXhhbXBsZS5jb206Q09ERQ==\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        conn.sendall(head.encode() + body[:10])
        time.sleep(0.5)  # the request is in the worker (its body half read) when SIGTERM comes
        workers = server.worker_pids()
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(server), "the listener closed")
        conn.sendall(body[10:])
        answer = read_response(conn)
        conn.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert server.proc.wait(timeout=60) == 0
        assert not any(alive(pid) for pid in workers)
        log = server.log_text()
        assert "POST /.well-known/est/simpleenroll 400" in log
        assert log.rstrip().endswith("hsmkm: stopped")


def refused(server: RunningServer) -> bool:
    try:
        tls_connection(server).close()
    except (ConnectionRefusedError, ConnectionResetError, ssl.SSLError):
        return True
    return False


def test_workers_stop_when_the_supervisor_is_killed(plain_home: Path) -> None:
    home = plain_home
    with running_server(home, workers=2) as server:
        workers = server.worker_pids()
        server.proc.kill()
        server.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers), "the orphaned workers stopped")


# --- what the log and the workers' process records hold -------------------------------------


def test_the_pin_reaches_workers_through_a_pipe_only(plain_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = plain_home
    pin = (home / "secrets" / "km.pin").read_text().strip()
    # the PIN from an environment variable: the workers do not inherit it
    env_args = ["--pin-source", "env:KM_PIN_FOR_TEST"]
    monkeypatch.setenv("KM_PIN_FOR_TEST", pin)
    with running_server(home, workers=2, extra_args=env_args) as server:
        for pid in server.worker_pids():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert pin.encode() not in cmdline and pin.encode() not in environ
            assert b"KM_PIN_FOR_TEST" not in environ
            assert b"hsmkm.server.worker" in cmdline
            open_files = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
            assert not any("km.pin" in f for f in open_files)
    assert pin not in server.log_text()


def test_the_access_log_names_each_request_and_never_a_secret(km_server: RunningServer) -> None:
    code = km_server.codes["alice@example.com"]
    csr_body = b"bm90IGEgQ1NS"
    km_server.request(
        "POST",
        "/.well-known/est/simpleenroll",
        body=csr_body,
        headers={"Content-Type": "application/pkcs10"},
        auth=("alice@example.com", code),
    )
    km_server.get("/directory/bob%1b%5b31m@example.com")
    km_server.get("/hsmkm/health?secret=" + code)
    wait_for(lambda: "/hsmkm/health 200" in km_server.log_text(), "the lines are written")
    log = km_server.log_text()
    lines = [line for line in log.splitlines() if " https " in line or line.startswith("hsmkm: https ")]
    assert any(
        re.fullmatch(
            r"hsmkm: https 127\.0\.0\.1 POST /\.well-known/est/simpleenroll 400 address=alice@example\.com [0-9.]+ms",
            line,
        )
        for line in lines
    ), log
    assert any(re.fullmatch(r"hsmkm: https 127\.0\.0\.1 GET /hsmkm/health 200 [0-9.]+ms", line) for line in lines), log
    assert "\x1b" not in log  # what a client sent is escaped
    for secret in (code, code.replace("-", ""), "Basic ", csr_body.decode(), "secret="):
        assert secret not in log
    pin = (km_server.home / "secrets" / "km.pin").read_text().strip()
    assert pin not in log


# --- read deadlines: a slow client cannot hold a connection ---------------------------------


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("impatient") / "home"
    init_km(home)
    with running_server(home, extra_args=["--read-timeout", "1"]) as server:
        yield server


def closed_by_server(conn: ssl.SSLSocket) -> bytes:
    """What the server sent until it closed the connection (the socket's own timeout, 60 s,
    far past the server's deadline, fails the test if it never does)."""
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLEOFError):
        pass
    return data


@pytest.mark.parametrize("sent", [b"", b"GET /hsmkm/health HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half"])
def test_a_request_whose_headers_do_not_come_is_dropped(impatient: RunningServer, sent: bytes) -> None:
    conn = tls_connection(impatient)
    conn.sendall(sent)
    assert closed_by_server(conn) == b""
    conn.close()
    assert impatient.get("/hsmkm/health").status == 200


def test_a_body_that_does_not_come_is_408(impatient: RunningServer) -> None:
    conn = tls_connection(impatient)
    conn.sendall(
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n"
        b"Content-Length: 100\r\n\r\nAAAA"
    )
    answer = closed_by_server(conn)
    conn.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_after_an_answer_the_next_requests_headers_have_their_deadline_too(impatient: RunningServer) -> None:
    conn = tls_connection(impatient)
    conn.sendall(b"GET /hsmkm/health HTTP/1.1\r\nHost: x\r\n\r\nGET /hsmkm/health HTTP/1.1\r\n")
    answer = closed_by_server(conn)
    conn.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1
