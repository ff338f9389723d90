"""``hsmkm serve`` as processes: it starts N workers behind one supervisor, with the embedded
default's TLS certificate issued by the KM CA for the listen names (a 0600 key in HOME/tls/,
reused while it fits); bad settings are one line and exit 2; the ``km_server`` fixture gives a
running server with a user's code."""

from __future__ import annotations

import json
import os
import ssl
import stat
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
