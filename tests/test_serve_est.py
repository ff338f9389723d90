"""The EST routes of ``hsmkm serve`` (RFC 7030, RFC 8951): what is checked before the KM is
asked — HTTP Basic (401 with a challenge), the content type (415), the CSR's base64, parse,
signature and, for serverkeygen, its DecryptKeyIdentifier (400), the size (413) — and then the
enrollment itself end to end: simpleenroll, serverkeygen, keyhistory, over real HTTPS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import hsmkm
from hsmkm.est import certsonly, keypart, multipart, transfer
from hsmkm.est import csr as est_csr
from server_harness import Answer, RunningServer, init_km, running_server

ALICE = "alice@example.com"
EST = "/.well-known/est"
POSTS = [f"{EST}/simpleenroll", f"{EST}/serverkeygen", "/hsmkm/est/keyhistory"]
PKCS10 = {"Content-Type": "application/pkcs10"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("est") / "home"
    codes = init_km(home)
    with running_server(home) as running:
        running.codes.update(codes)
        yield running


def csr_b64(email: str = ALICE, key_id: bytes | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return transfer.encode(est_csr.build(key, email, key_id))


def one_line(answer: Answer) -> str:
    text = answer.body.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


def audit_entries(home: Path) -> tuple[int, int]:
    """The audit log's length and the attempts counted on every code."""
    with contextlib.closing(sqlite3.connect(home / "km.db")) as db:
        entries = int(db.execute("select count(*) from audit").fetchone()[0])
        attempts = int(db.execute("select coalesce(sum(attempts), 0) from enrollment_codes").fetchone()[0])
    return entries, attempts


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer abc", "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode()],
    ids=["none", "bearer", "empty", "bad-base64", "no-colon"],
)
def test_without_usable_credentials_401_with_a_basic_challenge(
    server: RunningServer, path: str, authorization: str | None
) -> None:
    headers = dict(PKCS10)
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = server.request("POST", path, body=csr_b64(key_id=b"k" * 16), headers=headers)
    assert answer.status == 401
    assert answer.header("www-authenticate") == 'Basic realm="hsmkm"'
    one_line(answer)


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/pkcs7-mime", "application/pkcs10; x", "}{"])
def test_another_content_type_is_415(server: RunningServer, path: str, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    answer = server.request("POST", path, body=csr_b64(key_id=b"k"), headers=headers, auth=(ALICE, "WRONG"))
    assert answer.status == 415
    one_line(answer)


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "body",
    [b"", b"!!!!", b"AAAA", transfer.encode(b"\x30\x03\x02\x01\x00"), b"-----BEGIN CERTIFICATE REQUEST-----\nAA\n"],
    ids=["empty", "not-base64", "not-der", "not-a-csr", "broken-pem"],
)
def test_a_malformed_csr_is_400_and_counts_no_attempt(server: RunningServer, path: str, body: bytes) -> None:
    before = audit_entries(server.home)
    answer = server.request("POST", path, body=body, headers=PKCS10, auth=(ALICE, server.codes[ALICE]))
    assert answer.status == 400
    one_line(answer)
    assert audit_entries(server.home) == before


def test_a_csr_whose_signature_fails_is_400(server: RunningServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(est_csr.build(key, ALICE))
    der[-3] ^= 0x01  # inside the signature
    answer = server.request(
        "POST", f"{EST}/simpleenroll", body=transfer.encode(bytes(der)), headers=PKCS10, auth=(ALICE, "X")
    )
    assert answer.status == 400
    one_line(answer)


@pytest.mark.parametrize("path", POSTS[1:])
def test_serverkeygen_needs_a_decrypt_key_identifier(server: RunningServer, path: str) -> None:
    answer = server.request("POST", path, body=csr_b64(), headers=PKCS10, auth=(ALICE, server.codes[ALICE]))
    assert answer.status == 400
    assert "DecryptKeyIdentifier" in one_line(answer)


def test_a_body_past_the_cap_is_413_before_it_is_read(server: RunningServer) -> None:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    size = transfer.encoded_limit(est_csr.MAX_CSR) + 1
    raw = socket.create_connection((host, int(port)), timeout=60)
    with server.ssl_context().wrap_socket(raw, server_hostname=host) as conn:
        conn.sendall(
            f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert body.count(b"\n") == 1


@pytest.mark.parametrize("path", POSTS)
def test_the_enrollment_paths_take_only_post(server: RunningServer, path: str) -> None:
    assert server.get(path).status == 405


# Arbitrary requests on the EST paths: every answer is one the route chose (< 500), never the
# last-resort 500 (its log line "unexpected" would show it).
_HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from([*POSTS, f"{EST}/cacerts", f"{EST}/csrattrs", "/directory/x"]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    body=st.one_of(st.binary(max_size=300), st.builds(lambda: csr_b64(key_id=os.urandom(8)))),
    ctype=st.one_of(st.none(), st.just("application/pkcs10"), _HEADER_VALUES),
    authorization=st.one_of(st.none(), _HEADER_VALUES.map(lambda v: "Basic " + v)),
    accept=st.one_of(st.none(), _HEADER_VALUES),
)
def test_arbitrary_requests_never_reach_the_last_resort(
    server: RunningServer,
    path: str,
    method: str,
    body: bytes,
    ctype: str | None,
    authorization: str | None,
    accept: str | None,
) -> None:
    headers = {
        k: v
        for k, v in (("Content-Type", ctype), ("Authorization", authorization), ("Accept", accept))
        if v is not None
    }
    answer = server.request(method, path, body=body, headers=headers)
    assert answer.status < 500, (answer.status, answer.body)
    assert "unexpected" not in server.log_text()


# --- the last resort itself (a bug in a route), in-process on the ASGI application ----------


def _call(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "scheme": "https",
        "server": ("127.0.0.1", 1),
        "client": ("127.0.0.1", 2),
        "http_version": "1.1",
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_bug_in_a_route_is_a_generic_500_and_one_log_line_without_its_message() -> None:
    from starlette.routing import Route

    from hsmkm.server import app as server_app
    from hsmkm.server.guard import guarded

    lines: list[str] = []

    async def guarded_bug(request: Any) -> Any:
        raise KeyError("alice's code is SECRET-CODE")

    async def unguarded_bug(request: Any) -> Any:
        raise RuntimeError("SECRET-CODE")

    routes = [Route("/a", guarded(lines.append)(guarded_bug)), Route("/b", unguarded_bug)]
    application = server_app.build(routes, lines.append, "https")
    for path in ("/a", "/b"):
        status, body = _call(application, path)
        assert (status, body) == (500, b"internal server error\n")
    assert not any("SECRET" in line for line in lines)
    assert [line for line in lines if "unexpected" in line] == [
        "hsmkm: error: unexpected KeyError in GET /a",
        "hsmkm: error: unexpected RuntimeError in /b",
    ]
    assert sum(1 for line in lines if line.startswith("hsmkm: https 127.0.0.1 GET /")) == 2


# --- the enrollment end to end over HTTPS --------------------------------------------------


class EstClient:
    """Just enough of an EST client for these tests (est/ codecs over the harness's HTTPS)."""

    def __init__(self, server: RunningServer, email: str, code: str) -> None:
        self.server, self.email, self.code = server, email, code
        self.ca = x509.load_der_x509_certificate((server.home / "pub" / "ca.crt").read_bytes())

    def post(self, path: str, body: bytes, code: str | None = None) -> Answer:
        return self.server.request("POST", path, body=body, headers=PKCS10, auth=(self.email, code or self.code))

    def simpleenroll(self, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        answer = self.post(f"{EST}/simpleenroll", transfer.encode(est_csr.build(key, self.email)))
        assert answer.status == 200, answer.body
        assert answer.header("content-type") == "application/pkcs7-mime; smime-type=certs-only"
        assert answer.header("cache-control") == "no-store"
        (cert,) = certsonly.decode(transfer.decode(answer.body, 1 << 20, "simpleenroll"))
        return cert

    def keygen_body(self, key_id: bytes) -> bytes:
        return transfer.encode(est_csr.build(ec.generate_private_key(ec.SECP256R1()), self.email, key_id))

    def opened(self, parts: multipart.ServerKeygenParts, key_id: bytes) -> tuple[x509.Certificate, bytes]:
        (cert,) = certsonly.decode(parts.certs_part)
        opened = keypart.open_key(parts.key_part, keypart.kek(self.code, key_id), key_id, self.ca)
        assert opened.private_key.public_key() == cert.public_key()
        return cert, opened.pkcs8

    def serverkeygen(self) -> tuple[x509.Certificate, bytes]:
        key_id = os.urandom(16)
        answer = self.post(f"{EST}/serverkeygen", self.keygen_body(key_id))
        assert answer.status == 200, answer.body
        assert answer.header("cache-control") == "no-store"
        return self.opened(multipart.parse(answer.header("content-type") or "", answer.body), key_id)

    def keyhistory(self) -> list[tuple[x509.Certificate, bytes]] | Answer:
        key_id = os.urandom(16)
        answer = self.post("/hsmkm/est/keyhistory", self.keygen_body(key_id))
        if answer.status == 204:
            assert answer.body == b""
            return []
        if answer.status != 200:
            return answer
        pairs = multipart.parse_many(answer.header("content-type") or "", answer.body)
        return [self.opened(p, key_id) for p in pairs]


def usage(cert: x509.Certificate) -> x509.KeyUsage:
    return cert.extensions.get_extension_for_class(x509.KeyUsage).value


def test_an_enrollment_over_https_both_stages_then_the_code_is_spent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    codes = init_km(home)
    with running_server(home, workers=2) as server:
        client = EstClient(server, ALICE, codes[ALICE])
        assert client.keyhistory().status == 409  # type: ignore[union-attr]  # before serverkeygen
        signing_key = ec.generate_private_key(ec.SECP256R1())
        signing = client.simpleenroll(signing_key)
        assert signing.public_key() == signing_key.public_key()
        assert usage(signing).digital_signature and not usage(signing).key_encipherment
        signing.verify_directly_issued_by(client.ca)

        encryption, pkcs8 = client.serverkeygen()
        assert not usage(encryption).digital_signature
        encryption.verify_directly_issued_by(client.ca)
        assert client.keyhistory() == []  # an ordinary code: no history

        # a lost answer: the same certificate again (and the same key in a new key part)
        assert client.simpleenroll(signing_key) == signing
        again, again_pkcs8 = client.serverkeygen()
        assert (again, again_pkcs8) == (encryption, pkcs8)
        # a retry with another signing key is refused: never a second certificate
        refused = client.post(
            f"{EST}/simpleenroll", transfer.encode(est_csr.build(ec.generate_private_key(ec.SECP256R1()), ALICE))
        )
        assert refused.status in (400, 403)
        one_line(refused)

        # the directory has both, and the KM archived the encryption key
        listed = server.get(f"/directory/{ALICE}", headers={"Accept": "application/json"})
        serials = {c["use"]: int(c["serial"], 16) for c in json.loads(listed.body)["certificates"]}
        assert serials == {"encryption": encryption.serial_number, "signing": signing.serial_number}
        with contextlib.closing(sqlite3.connect(home / "km.db")) as db:
            archived = db.execute("select cert_serial from archive").fetchall()
        assert archived == [(f"{encryption.serial_number:040x}",)]

        log = server.log_text()
        assert f"POST /.well-known/est/serverkeygen 200 address={ALICE}" in log
        assert codes[ALICE] not in log
    hsmkm("audit", "verify", home=home)


def test_a_wrong_code_and_an_unknown_address_get_the_same_403(server: RunningServer) -> None:
    body = csr_b64()
    wrong = server.request("POST", f"{EST}/simpleenroll", body=body, headers=PKCS10, auth=(ALICE, "AAAA-BBBB-CCCC"))
    unknown_body = csr_b64("nobody@example.com")
    unknown = server.request(
        "POST", f"{EST}/simpleenroll", body=unknown_body, headers=PKCS10, auth=("nobody@example.com", "AAAA-BBBB-CCCC")
    )
    assert wrong.status == unknown.status == 403
    assert one_line(wrong) == one_line(unknown)


def test_keyhistory_after_a_recovery_brings_the_archived_key_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    codes = init_km(home)
    with running_server(home) as server:
        first = EstClient(server, ALICE, codes[ALICE])
        first.simpleenroll(ec.generate_private_key(ec.SECP256R1()))
        old_cert, old_key = first.serverkeygen()

        rid = str(hsmkm("--json", "recovery", "request", ALICE, "--reason", "lost laptop", home=home).json()["id"])
        for officer in ("officer1", "officer2"):
            hsmkm("recovery", "approve", rid, "--officer", officer, "--yes", home=home)
        new_code = hsmkm("--json", "recovery", "complete", rid, "--reenable", home=home).json()["code"]

        second = EstClient(server, ALICE, new_code)
        assert second.keyhistory().status == 409  # type: ignore[union-attr]
        second.simpleenroll(ec.generate_private_key(ec.SECP256R1()))
        new_cert, _ = second.serverkeygen()
        assert new_cert != old_cert
        for _ in range(2):  # and again after a lost answer
            assert second.keyhistory() == [(old_cert, old_key)]
        wrong = EstClient(server, ALICE, codes[ALICE]).keyhistory()
        assert isinstance(wrong, Answer) and wrong.status == 403
    hsmkm("audit", "verify", home=home)


@pytest.mark.parametrize(
    "twice",
    [
        "Authorization: Basic YWxpY2VAZXhhbXBsZS5jb206WA==\r\nAuthorization: Basic Ym9iQGV4YW1wbGUuY29tOlk=",
        "Content-Type: application/pkcs10\r\nContent-Type: text/plain",
    ],
    ids=["authorization", "content-type"],
)
def test_a_header_given_twice_is_refused_not_guessed(server: RunningServer, twice: str) -> None:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    body = csr_b64()
    other = "Content-Type: application/pkcs10" if twice.startswith("Authorization") else "Authorization: Basic eDp5"
    raw = socket.create_connection((host, int(port)), timeout=60)
    with server.ssl_context().wrap_socket(raw, server_hostname=host) as conn:
        conn.sendall(
            f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{twice}\r\n{other}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"more than one" in text and text.count(b"\n") == 1
