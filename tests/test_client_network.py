"""A client that holds nothing of the KM: a profile with only the CA certificate, HSMKM_HOME
unset, every command over the network to a real ``hsmkm serve``. It enrolls into an .epf and
into a token slot (EST), looks recipients up in the directory, encrypts, fetches CRLs; with
the server stopped it signs, verifies, encrypts to cached recipients and decrypts. A server
of another CA, a forged directory answer and a response lost on the way are each acted out."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import MakeToken, Run, hsmkm
from server_harness import RunningServer

PW = "correct-horse-battery"
NOTE = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: over the network\r\n\r\nhello bob\r\n"


def client(*args: str, env: dict[str, str] | None = None, check: bool = True, input: bytes | None = None) -> Run:
    """The hsmkm CLI as a user's machine runs it: no HSMKM_HOME (conftest strips HSMKM_*)."""
    return hsmkm(*args, env=env, check=check, input=input)


def add_user(home: Path, email: str) -> str:
    return str(hsmkm("user", "add", email, "--json", home=home).json()["code"])


def enroll_epf(url: str, profile: Path, email: str, code: str, epf: Path, *extra: str, check: bool = True) -> Run:
    return client(
        "enroll", "--km", url, "--profile", str(profile), "--email", email,
        "--code-source", "env:CODE", "--keystore", str(epf), "--password-source", "env:PW", "--json", *extra,
        env={"CODE": code, "PW": PW}, check=check,
    )  # fmt: skip


def certificates_of(home: Path, email: str) -> list[dict[str, Any]]:
    certs: list[dict[str, Any]] = hsmkm("user", "show", email, "--json", home=home).json()["certificates"]
    return certs


def test_a_client_with_only_the_ca_certificate_enrolls_and_works_online_then_offline(
    km_server: RunningServer, tmp_path: Path, user_token: MakeToken, module_path: str
) -> None:
    home = km_server.home
    hsmkm("crl", "publish", home=home)
    alice_profile, bob_profile = tmp_path / "alice-profile", tmp_path / "bob-profile"
    alice_epf = tmp_path / "alice.epf"

    # alice: an .epf, her profile made from the CA certificate alone
    out = enroll_epf(
        km_server.url, alice_profile, "alice@example.com", km_server.codes["alice@example.com"], alice_epf,
        "--ca-cert", str(km_server.ca_pem),
    ).json()  # fmt: skip
    assert out["email"] == "alice@example.com" and out["history_keys"] == 0
    assert sorted(p.name for p in alice_profile.iterdir()) == ["ca.crt", "profile.json"]
    assert json.loads((alice_profile / "profile.json").read_text())["km"] == km_server.url
    info = client("keystore", "info", str(alice_epf), "--password-source", "env:PW", "--json", env={"PW": PW}).json()
    assert info["signing"] and len(info["encryption"]) == 1
    kinds = sorted(c["kind"] for c in certificates_of(home, "alice@example.com") if c["current"])
    assert len(kinds) == 2  # one signing and one encryption certificate, no more

    # bob: a token slot of his own, his own profile
    conf = user_token("bob", "bob-pin-1234")
    token_env = {"BOB_PIN": "bob-pin-1234", "SOFTHSM2_CONF": str(conf)}
    bob_uri = f"pkcs11:token=bob?module-path={module_path}&pin-source=env:BOB_PIN"
    client(
        "enroll", "--km", km_server.url, "--profile", str(bob_profile), "--ca-cert", str(km_server.ca_pem),
        "--email", "bob@example.com", "--code-source", "env:CODE", "--keystore", bob_uri,
        env={"CODE": add_user(home, "bob@example.com"), **token_env},
    )  # fmt: skip

    # online: CRLs by URL, a recipient looked up, validated and cached; encrypt, decrypt
    for profile in (alice_profile, bob_profile):
        fetched = client("crl", "fetch", "--profile", str(profile), "--json").json()
        assert fetched["full"] is not None and Path(fetched["cache"]).is_relative_to(profile / "crl")
    (tmp_path / "note.eml").write_bytes(NOTE)
    client(
        "msg", "encrypt", "--profile", str(alice_profile), "--to", "bob@example.com", "--from", "alice@example.com",
        str(tmp_path / "note.eml"), "-o", str(tmp_path / "online.eml"),
    )  # fmt: skip
    cached = alice_profile / "recipients" / "bob@example.com.enc.crt"
    assert x509.load_der_x509_certificate(cached.read_bytes()).subject  # kept, as DER
    bob_decrypt = ("msg", "decrypt", "--profile", str(bob_profile), "--keystore", bob_uri)
    client(*bob_decrypt, str(tmp_path / "online.eml"), "-o", str(tmp_path / "online.out"), env=token_env)
    assert b"hello bob" in (tmp_path / "online.out").read_bytes()

    # the server stops: sign, verify, encrypt to the cached recipient, decrypt
    km_server.stop()
    client(
        "msg", "sign", "--profile", str(alice_profile), "--keystore", str(alice_epf), "--password-source", "env:PW",
        str(tmp_path / "note.eml"), "-o", str(tmp_path / "signed.eml"), env={"PW": PW},
    )  # fmt: skip
    verified = client("msg", "verify", "--profile", str(bob_profile), str(tmp_path / "signed.eml"), "--json").json()
    assert verified["valid"] is True and verified["signer"] == "alice@example.com"
    offline = client(
        "msg", "encrypt", "--profile", str(alice_profile), "--to", "bob@example.com",
        "--sign-with", str(alice_epf), "--password-source", "env:PW",
        str(tmp_path / "note.eml"), "-o", str(tmp_path / "offline.eml"), env={"PW": PW},
    )  # fmt: skip
    assert "cached certificate of bob@example.com" in offline.stderr
    opened = client(
        *bob_decrypt, str(tmp_path / "offline.eml"), "-o", str(tmp_path / "offline.out"), "--json", env=token_env
    ).json()
    assert opened["signed_by"] == "alice@example.com"
    assert b"hello bob" in (tmp_path / "offline.out").read_bytes()
    # a recipient never looked up cannot be had offline: refused, not guessed
    miss = client(
        "msg", "encrypt", "--profile", str(alice_profile), "--to", "carol@example.com",
        str(tmp_path / "note.eml"), "-o", str(tmp_path / "carol.eml"), check=False,
    )  # fmt: skip
    assert miss.returncode == 3 and "no certificate of carol@example.com is cached" in miss.stderr
    assert not (tmp_path / "carol.eml").exists()


def test_a_server_of_another_ca_is_refused_and_the_code_still_works(
    km_server: RunningServer, km_home: Path, tmp_path: Path
) -> None:
    """A profile that trusts another KM's CA: the TLS handshake is refused, nothing is written,
    and the code is not burnt."""
    other_ca = tmp_path / "other-ca.der"
    other_ca.write_bytes((km_home / "pub" / "ca.crt").read_bytes())
    epf = tmp_path / "alice.epf"
    code = km_server.codes["alice@example.com"]
    refused = enroll_epf(
        km_server.url, tmp_path / "p", "alice@example.com", code, epf, "--ca-cert", str(other_ca), check=False
    )
    assert refused.returncode == 1, refused.stderr
    assert "not trusted by the profile's CA" in refused.stderr and "Traceback" not in refused.stderr
    assert not epf.exists() and certificates_of(km_server.home, "alice@example.com") == []
    # the profile keeps its anchor until the user names another one explicitly
    again = enroll_epf(km_server.url, tmp_path / "p", "alice@example.com", code, epf, check=False)
    assert again.returncode == 1 and not epf.exists()
    enroll_epf(km_server.url, tmp_path / "p", "alice@example.com", code, epf, "--ca-cert", str(km_server.ca_pem))
    assert epf.exists()


def test_a_wrong_code_is_refused_over_est_and_leaves_no_keystore(km_server: RunningServer, tmp_path: Path) -> None:
    epf = tmp_path / "alice.epf"
    run = enroll_epf(
        km_server.url, tmp_path / "p", "alice@example.com", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH", epf,
        "--ca-cert", str(km_server.ca_pem), check=False,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.startswith("hsmkm: error: ") and "Traceback" not in run.stderr
    assert not epf.exists()


# --- a forged directory answer -------------------------------------------------------------


def _forged(cert: x509.Certificate) -> x509.Certificate:
    """The certificate's every field, signed by a key that is not the CA's."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.SubjectKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())


@contextlib.contextmanager
def impostor(home: Path, answers: dict[str, bytes]) -> Iterator[str]:
    """A TLS server holding the KM's own server certificate and key (as someone who took them
    from the server's disk), answering ``/directory/EMAIL`` with the DER it is given."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            email = self.path.split("?")[0].rsplit("/", 1)[-1].replace("%40", "@")
            body = answers.get(email)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/pkix-cert")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(home / "tls" / "server.crt", home / "tls" / "server.key")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_forged_or_substituted_directory_answer_is_refused_and_not_cached(
    km_server: RunningServer, tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    enroll_epf(
        km_server.url, profile, "alice@example.com", km_server.codes["alice@example.com"], tmp_path / "alice.epf",
        "--ca-cert", str(km_server.ca_pem),
    )  # fmt: skip
    add_code = add_user(km_server.home, "bob@example.com")
    enroll_epf(
        km_server.url,
        tmp_path / "bob-profile",
        "bob@example.com",
        add_code,
        tmp_path / "bob.epf",
        "--ca-cert",
        str(km_server.ca_pem),
    )
    hsmkm("crl", "publish", home=km_server.home)
    client("crl", "fetch", "--profile", str(profile))
    alice_enc = (km_server.home / "pub" / "certs" / "alice@example.com.enc.crt").read_bytes()
    bob_enc = x509.load_der_x509_certificate(
        (km_server.home / "pub" / "certs" / "bob@example.com.enc.crt").read_bytes()
    )
    (tmp_path / "note.eml").write_bytes(NOTE)
    forged = _forged(bob_enc).public_bytes(serialization.Encoding.DER)
    cases = {
        "forged": (forged, "not issued by the profile's CA"),
        "substituted": (alice_enc, "does not name bob@example.com"),
    }
    for name, (answer, why) in cases.items():
        with impostor(km_server.home, {"bob@example.com": answer}) as url:
            run = client(
                "msg", "encrypt", "--km", url, "--profile", str(profile), "--to", "bob@example.com",
                str(tmp_path / "note.eml"), "-o", str(tmp_path / f"{name}.eml"), check=False,
            )  # fmt: skip
        assert run.returncode == 1 and why in run.stderr, (name, run.stderr)
        assert not (tmp_path / f"{name}.eml").exists()
        assert not (profile / "recipients" / "bob@example.com.enc.crt").exists()


# --- a response lost on the way ---------------------------------------------------------------


@contextlib.contextmanager
def dropping_proxy(server: RunningServer, drop: set[int]) -> Iterator[tuple[int, list[int]]]:
    """A relay in front of the server (it presents the server's own TLS certificate, as the
    network path the KM's answers take) that passes each request on and, for the requests
    numbered in ``drop`` (1, 2, ...), lets the server answer in full, then resets the client's
    connection before a byte of the answer reaches it: a response lost on the way. Yields its
    port and the list of requests seen."""
    listener = socket.create_server(("127.0.0.1", 0))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server.home / "tls" / "server.crt", server.home / "tls" / "server.key")
    upstream_tls = ssl.create_default_context(cafile=str(server.ca_pem))
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    seen: list[int] = []

    def read_request(conn: ssl.SSLSocket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def handle(raw: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            conn = tls.wrap_socket(raw, server_side=True)
            request = read_request(conn)
            with upstream_tls.wrap_socket(socket.create_connection((host, port)), server_hostname=host) as up:
                up.sendall(request)
                answer = b""
                while chunk := up.recv(65536):  # the client asked for Connection: close
                    answer += chunk
            if number in drop:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()  # a reset: the answer never arrives
                return
            conn.sendall(answer)
            conn.close()

    def accept() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            seen.append(len(seen) + 1)
            threading.Thread(target=handle, args=(raw, len(seen)), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        listener.close()


@pytest.mark.parametrize("lost", [2, 3], ids=["simpleenroll", "serverkeygen"])
def test_a_lost_response_is_retried_with_the_same_code_and_issues_nothing_twice(
    km_server: RunningServer, tmp_path: Path, lost: int
) -> None:
    """Connections: 1 cacerts, 2 simpleenroll, 3 serverkeygen, ... The answer to the one
    numbered ``lost`` is cut off after the KM made it; the client sends it again with the
    same code, and the KM answers with what it issued the first time."""
    epf = tmp_path / "alice.epf"
    with dropping_proxy(km_server, {lost}) as (proxy_port, seen):
        enroll_epf(
            f"https://127.0.0.1:{proxy_port}", tmp_path / "p", "alice@example.com",
            km_server.codes["alice@example.com"], epf, "--ca-cert", str(km_server.ca_pem),
        )  # fmt: skip
    assert len(seen) == 5  # cacerts, simpleenroll, serverkeygen, keyhistory, and the one sent again
    certs = certificates_of(km_server.home, "alice@example.com")
    assert sorted(c["kind"] for c in certs) == sorted({c["kind"] for c in certs}) and len(certs) == 2
    info = client("keystore", "info", str(epf), "--password-source", "env:PW", "--json", env={"PW": PW}).json()
    assert len(info["encryption"]) == 1
    assert hsmkm("user", "show", "alice@example.com", "--json", home=km_server.home).json()["archived_keys"] == 1


# --- CRLs by the distribution point, over plain HTTP --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def plain_server(port: int, body: bytes) -> Iterator[list[str]]:
    """A plain HTTP server on ``port`` answering every GET with ``body`` as a CRL."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/pkix-crl")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield paths
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_crls_come_by_the_distribution_point_over_plain_http_and_a_forged_one_is_refused(tmp_path: Path) -> None:
    """The certificates name ``http://127.0.0.1:PORT/crl/full.crl``; the client fetches it there
    without TLS. Whoever answers on that port instead (plain HTTP has no server to trust) and
    serves a CRL not signed by the CA is refused, and the cache keeps the real one."""
    from server_harness import running_server

    port = _free_port()
    home = tmp_path / "km"
    hsmkm(
        "init", "--ca-subject", "CN=CDP CA,O=hsmkm tests", "--ca-key", "p256",
        "--base-url", f"http://127.0.0.1:{port}/", home=home,
    )  # fmt: skip
    code = add_user(home, "alice@example.com")
    hsmkm("crl", "publish", home=home)
    profile = tmp_path / "profile"
    with running_server(home, extra_args=["--listen-http", f"127.0.0.1:{port}"]) as server:
        enroll_epf(server.url, profile, "alice@example.com", code, tmp_path / "a.epf", "--ca-cert", str(server.ca_pem))
        settings = json.loads((profile / "profile.json").read_text())
        assert settings["crl"]["full"] == f"http://127.0.0.1:{port}/crl/full.crl"
        first = client("crl", "fetch", "--profile", str(profile), "--json").json()
        assert "http 127.0.0.1 GET /crl/full.crl 200" in server.log_text()
    key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(ca.not_valid_before_utc)
        .next_update(ca.not_valid_after_utc)
        .add_extension(x509.CRLNumber(first["full"] + 100), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with plain_server(port, forged) as paths:
        run = client("crl", "fetch", "--profile", str(profile), check=False)
    assert paths and paths[0] == "/crl/full.crl"
    assert run.returncode != 0 and "signature does not verify" in run.stderr, run.stderr
    kept = client("crl", "fetch", "--profile", str(profile), "--json", check=False)
    assert kept.returncode == 3  # nobody answers now; the verified cache is still the one installed
    assert json.loads((Path(first["cache"]) / "meta.json").read_text())["full_number"] == first["full"]


def test_an_enrollment_cut_off_after_simpleenroll_is_finished_by_the_same_command_again(
    km_server: RunningServer, tmp_path: Path
) -> None:
    """Every serverkeygen answer is lost (connections 3, 4 and 5: the request and its two
    retries): the command fails, keeping its certified signing key waiting in the keystore's
    place; run again with the same code, it sends that key again and completes, and the KM
    has issued one signing certificate, not two."""
    epf, profile = tmp_path / "alice.epf", tmp_path / "p"
    code = km_server.codes["alice@example.com"]
    with dropping_proxy(km_server, {3, 4, 5}) as (proxy_port, _seen):
        cut = enroll_epf(
            f"https://127.0.0.1:{proxy_port}", profile, "alice@example.com", code, epf,
            "--ca-cert", str(km_server.ca_pem), check=False,
        )  # fmt: skip
    assert cut.returncode == 3 and "run the same command again with the same code" in cut.stderr, cut.stderr
    assert not epf.exists()
    enroll_epf(km_server.url, profile, "alice@example.com", code, epf)
    certs = certificates_of(km_server.home, "alice@example.com")
    assert sorted(c["kind"] for c in certs) == sorted({c["kind"] for c in certs}) and len(certs) == 2


def test_after_a_recovery_the_key_history_comes_over_est_and_old_mail_opens(
    km_server: RunningServer, tmp_path: Path
) -> None:
    """alice loses her keystore; two officers approve her recovery, she re-enrolls over HTTPS
    into a new .epf with the recovery code and receives her archived key: a message sent to
    her first key opens with the new keystore."""
    home, profile = km_server.home, tmp_path / "profile"
    first = tmp_path / "first.epf"
    enroll_epf(
        km_server.url, profile, "alice@example.com", km_server.codes["alice@example.com"], first,
        "--ca-cert", str(km_server.ca_pem),
    )  # fmt: skip
    hsmkm("crl", "publish", home=home)
    (tmp_path / "note.eml").write_bytes(NOTE)
    client(
        "msg", "encrypt", "--profile", str(profile), "--to", "alice@example.com",
        str(tmp_path / "note.eml"), "-o", str(tmp_path / "old.eml"),
    )  # fmt: skip
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "lost laptop", "--json", home=home).json()["id"]
    for officer in ("officer1", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home)
    code_file = tmp_path / "alice.code"
    hsmkm("recovery", "complete", str(rid), "--reenable", "--code-out", str(code_file), home=home)
    new = tmp_path / "new.epf"
    out = enroll_epf(km_server.url, profile, "alice@example.com", code_file.read_text().strip(), new).json()
    assert out["history_keys"] == 1
    info = client("keystore", "info", str(new), "--password-source", "env:PW", "--json", env={"PW": PW}).json()
    assert len(info["encryption"]) == 2  # the new key and the recovered one
    client(
        "msg", "decrypt", "--profile", str(profile), "--keystore", str(new), "--password-source", "env:PW",
        str(tmp_path / "old.eml"), "-o", str(tmp_path / "old.out"), env={"PW": PW},
    )  # fmt: skip
    assert b"hello bob" in (tmp_path / "old.out").read_bytes()
