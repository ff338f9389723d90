"""The serve bench's load generator: one new TLS connection per request, trusting only the CA
it is given, the answer read by Content-Length, failures raised after every client stopped,
and the nearest-rank percentile. (No timing is asserted: figures belong to scripts/bench.)"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from hsmkm.bench import loadgen


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem, key_pem = folder / f"{name}.crt", folder / f"{name}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_pem, key_pem


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps a connection open unless the client says close
    connections: set[tuple[str, int]] = set()  # noqa: RUF012 (one test server at a time)
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: bytes) -> None:
        with self.lock:
            self.connections.add(self.client_address)
        status = 404 if self.path == "/missing" else 200
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(b"x" * 100_000)

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cert, key = _self_signed(tmp_path, "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    _Handler.connections = set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1]), cert
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_each_request_is_a_new_tls_connection_and_the_body_is_read_whole(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    target = loadgen.Target("127.0.0.1", port, loadgen.client_context(ca))
    run = loadgen.drive(4, list(range(20)), lambda i: loadgen.request(target, "POST", "/", (), f"body {i}".encode()))
    assert [r.body for r in run.results] == [f"body {i}".encode() for i in range(20)]
    assert all(r.status == 200 and r.headers["content-type"] == "text/plain" for r in run.results)
    assert len(_Handler.connections) == 20  # a client port of its own for every request
    assert len(run.latencies) == 20 and all(t > 0 for t in run.latencies)
    big = loadgen.request(target, "GET", "/")
    assert big.body == b"x" * 100_000


def test_a_server_of_another_ca_is_refused(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_server
    other, _ = _self_signed(tmp_path, "other")
    target = loadgen.Target("127.0.0.1", port, loadgen.client_context(other))
    with pytest.raises(loadgen.LoadError, match="CERTIFICATE_VERIFY_FAILED"):
        loadgen.request(target, "GET", "/")


def test_a_failing_job_is_raised_after_the_clients_stop(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    target = loadgen.Target("127.0.0.1", port, loadgen.client_context(ca))

    def job(path: str) -> int:
        status = loadgen.request(target, "GET", path).status
        if status != 200:
            raise loadgen.LoadError(f"{path}: {status}")
        return status

    with pytest.raises(loadgen.LoadError, match="/missing: 404"):
        loadgen.drive(3, ["/"] * 5 + ["/missing"] + ["/"] * 5, job)
    assert not [t for t in threading.enumerate() if t.name.endswith("(client)")]  # every client stopped first


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=200), st.integers(1, 100))
def test_percentile_is_the_nearest_rank(values: list[float], q: int) -> None:
    p = loadgen.percentile(values, q)
    assert p in values
    n = len(values)
    assert sum(v <= p for v in values) * 100 >= q * n  # at least q% at or below it
    assert sum(v < p for v in values) * 100 < q * n  # and fewer than q% strictly below
    assert loadgen.percentile(values, 100) == max(values)
