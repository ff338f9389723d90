"""``hsmkm serve`` under abuse: malformed requests, as an attacker sends them.

Each request of the table gets its own 4xx (the exact code), a one-line body with no trace of
the server's insides, and changes nothing: every row of every table of the KM database (read
through sqlite3, read-only) and the audit log are the same before and after — except, for a
wrong code, exactly its one counted attempt and the audit entry recording it. A wrong code
sent from 20 connections at once is counted up to its limit and no further, and the code is
then burnt. The server's log names no code, PIN or private key.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from conftest import hsmkm, trial_pin
from hsmkm.server.app import BODY_TIMEOUT, MAX_BODY
from serve_outside import RawRequest, Reply, Rows, column, db_rows, host_port, row_difference, send_raw
from server_harness import RunningServer, running_server

EST = "/.well-known/est"
OID_DECRYPT_KEY_ID = "1.2.840.113549.1.9.16.2.37"
CSR_CAP = 64 << 10
BODY_TIMEOUT_S = int(BODY_TIMEOUT)


@dataclass
class Target:
    server: RunningServer
    email: str  # a user whose code the table's requests use (right or wrong)
    code: str
    key: ec.EllipticCurvePrivateKey
    serial: int = 0

    def fresh_user(self) -> tuple[str, str]:
        self.serial += 1
        email = f"abuse{self.serial}@example.com"
        code = hsmkm("--json", "user", "add", email, home=self.server.home).json()["code"]
        assert isinstance(code, str)
        return email, code


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("serve-abuse") / "home"
    hsmkm("init", "--ca-subject", "CN=Abuse CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    email = "victim@example.com"
    code = hsmkm("--json", "user", "add", email, home=home).json()["code"]
    with running_server(home) as server:
        yield Target(server, email, code, ec.generate_private_key(ec.SECP256R1()))


def csr_der(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    email: str,
    decrypt_key_id: bytes | None = None,
) -> bytes:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    )
    if decrypt_key_id is not None:  # an OCTET STRING, as RFC 7030 §4.4.1.1 has it
        builder = builder.add_attribute(
            x509.ObjectIdentifier(OID_DECRYPT_KEY_ID), decrypt_key_id, _tag=_ASN1Type.OctetString
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Case:
    """One malformed request: how to make it, the status it must get, and whether it counts
    one wrong attempt against the code it names."""

    name: str
    make: Callable[[Target], RawRequest]
    status: int
    counts_attempt: bool = False
    fresh_user: bool = False  # the request names a user of its own (made before the 'before')
    slow: bool = False  # waits out the server's body deadline


def request(
    t: Target,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    auth: str | None = "right",
    content_type: str | None = "application/pkcs10",
    headers: list[tuple[str, str]] | None = None,
    content_length: str | None = None,
    email: str | None = None,
    code: str | None = None,
) -> RawRequest:
    host, port = host_port(t.server.url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    who = email if email is not None else t.email
    secret = code if code is not None else t.code
    if auth == "right":
        lines.append(f"Authorization: {basic(who, secret)}")
    elif auth is not None:
        lines.append(f"Authorization: {auth}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    elif method in ("POST", "PUT") or body:
        lines.append(f"Content-Length: {len(body)}")
    return RawRequest(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), (body,) if body else ())


def enroll(t: Target, body: bytes, **kw: Any) -> RawRequest:
    return request(t, "POST", f"{EST}/simpleenroll", body, **kw)


def good_csr(t: Target) -> bytes:
    return b64(csr_der(t.key, t.email))


def bad_signature(t: Target) -> bytes:
    der = bytearray(csr_der(t.key, t.email))
    der[-1] ^= 0x01  # the last octet of the ECDSA signature's s
    return b64(bytes(der))


def oversized_csr(t: Target) -> bytes:
    """A base64 body of one octet more than a CSR may have."""
    return b64(b"\x30\x83" + (CSR_CAP - 3).to_bytes(3, "big") + b"\x00" * (CSR_CAP - 4))


def chunked_oversize(t: Target) -> RawRequest:
    head = request(t, "POST", f"{EST}/simpleenroll", headers=[("Transfer-Encoding", "chunked")]).head
    chunk = b"A" * 32768
    pieces = [b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(64)] + [b"0\r\n\r\n"]
    return RawRequest(head, pieces)


def slow_body(t: Target) -> RawRequest:
    body = good_csr(t)
    head = request(t, "POST", f"{EST}/simpleenroll", content_length=str(len(body))).head
    steps = BODY_TIMEOUT_S + 5  # one octet a second, the body never complete before the deadline
    assert steps < len(body)
    return RawRequest(head, [body[i : i + 1] for i in range(steps)], pause=1.0)


def length_lie_longer(t: Target) -> RawRequest:
    body = good_csr(t)
    head = request(t, "POST", f"{EST}/simpleenroll", content_length=str(len(body) + 500)).head
    return RawRequest(head, [body])


def length_lie_shorter(t: Target) -> RawRequest:
    body = good_csr(t)
    head = request(t, "POST", f"{EST}/simpleenroll", content_length="10").head
    return RawRequest(head, [body])


def serverkeygen(t: Target, body: bytes, **kw: Any) -> RawRequest:
    return request(t, "POST", f"{EST}/serverkeygen", body, **kw)


def rsa1024_csr(t: Target) -> bytes:
    return b64(csr_der(rsa.generate_private_key(65537, 1024), t.email))


def a_certificate(t: Target) -> bytes:
    """The KM's own CA certificate, base64 as a CSR would be."""
    return b"\n".join(t.server.ca_pem.read_bytes().strip().splitlines()[1:-1]) + b"\n"


def unknown_user(t: Target) -> RawRequest:
    stranger = "nobody-here@example.com"
    return enroll(t, b64(csr_der(t.key, stranger)), email=stranger)


CASES: list[Case] = [
    # bodies
    Case("empty body", lambda t: enroll(t, b""), 400),
    Case("not base64", lambda t: enroll(t, b"this is not base64 at all!\n"), 400),
    Case("base64 of garbage", lambda t: enroll(t, b64(os.urandom(300))), 400),
    Case("base64 of a certificate", lambda t: enroll(t, a_certificate(t)), 400),
    Case("CSR with a bad signature", lambda t: enroll(t, bad_signature(t)), 400),
    Case("CSR for another address", lambda t: enroll(t, b64(csr_der(t.key, "bob@example.com"))), 400),
    Case("CSR for an RSA-1024 key", lambda t: enroll(t, rsa1024_csr(t)), 400),
    Case(
        "PEM junk",
        lambda t: enroll(t, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAAzzzz\n-----END CERTIFICATE REQUEST-----\n"),
        400,
    ),
    Case("CSR of 64 KiB + 1", lambda t: enroll(t, oversized_csr(t)), 400),  # within the body cap, over the CSR's
    Case("body one octet over the cap", lambda t: enroll(t, b"A" * (MAX_BODY + 1)), 413),
    Case("Content-Length over the cap", lambda t: enroll(t, b"MIIB", content_length="100000000"), 413),
    Case("Content-Length longer than the body", length_lie_longer, 408, slow=True),
    Case("Content-Length shorter than the body", length_lie_shorter, 400),
    Case("Content-Length not a number", lambda t: enroll(t, b"MIIB", content_length="12abc"), 400),
    Case("chunked oversize", chunked_oversize, 413),
    Case("slow body past the deadline", slow_body, 408, slow=True),
    # headers
    Case("wrong Content-Type", lambda t: enroll(t, good_csr(t), content_type="text/plain"), 415),
    Case("missing Content-Type", lambda t: enroll(t, good_csr(t), content_type=None), 415),
    Case(
        "two Content-Types",
        lambda t: enroll(t, good_csr(t), headers=[("Content-Type", "application/pkcs10")]),
        400,
    ),
    Case("malformed Content-Type", lambda t: enroll(t, good_csr(t), content_type="application/pkcs10; =;;"), 415),
    Case("Bearer authorization", lambda t: enroll(t, good_csr(t), auth="Bearer abc.def.ghi"), 401),
    Case("Digest authorization", lambda t: enroll(t, good_csr(t), auth='Digest username="victim"'), 401),
    Case("Basic, not base64", lambda t: enroll(t, good_csr(t), auth="Basic !!!***"), 401),
    Case(
        "Basic without a colon",
        lambda t: enroll(t, good_csr(t), auth="Basic " + base64.b64encode(b"victim@example.com").decode()),
        401,
    ),
    Case("Basic with nothing", lambda t: enroll(t, good_csr(t), auth="Basic"), 401),
    Case("no Authorization", lambda t: enroll(t, good_csr(t), auth=None), 401),
    # a head larger than any one read of the server's, so never whole in its buffer
    Case("huge header", lambda t: enroll(t, good_csr(t), headers=[("X-Padding", "a" * (1 << 20))]), 400),
    Case("unknown user", unknown_user, 403),
    Case("wrong code", lambda t: enroll(t, good_csr(t), code="AAAA-BBBB-CCCC-DDDD"), 403, counts_attempt=True),
    Case(
        "wrong code, serverkeygen",
        lambda t: serverkeygen(t, b64(csr_der(t.key, t.email, b"key-id-1")), code="AAAA-BBBB-CCCC-DDDD"),
        403,
        counts_attempt=True,
    ),
    Case("empty password", lambda t: enroll(t, good_csr(t), code=""), 401),
    # methods
    Case("GET simpleenroll", lambda t: request(t, "GET", f"{EST}/simpleenroll", content_type=None), 405),
    Case("GET serverkeygen", lambda t: request(t, "GET", f"{EST}/serverkeygen", content_type=None), 405),
    Case("POST cacerts", lambda t: request(t, "POST", f"{EST}/cacerts", good_csr(t)), 405),
    Case("POST ca.crt", lambda t: request(t, "POST", "/ca.crt", b"x"), 405),
    Case("DELETE directory", lambda t: request(t, "DELETE", f"/directory/{t.email}", content_type=None), 405),
    # paths
    Case("directory traversal", lambda t: request(t, "GET", "/directory/..%2f..%2fkm.json", content_type=None), 404),
    Case("NUL in a path", lambda t: request(t, "GET", "/directory/victim%00@example.com", content_type=None), 400),
    Case(
        "overlong address",
        lambda t: request(t, "GET", "/directory/" + "a" * 5000 + "@example.com", content_type=None),
        400,
    ),
    Case("CRL path up to km.json", lambda t: request(t, "GET", "/crl/../km.json", content_type=None), 404),
    Case("the PIN file", lambda t: request(t, "GET", "/secrets/km.pin", content_type=None), 404),
    Case("unknown EST operation", lambda t: request(t, "POST", f"{EST}/fullcmc", good_csr(t)), 404),
    Case(
        "directory, an unknown use",
        lambda t: request(t, "GET", f"/directory/{t.email}?use=bogus", content_type=None),
        400,
    ),
    Case(
        "directory, an unknown user",
        lambda t: request(t, "GET", "/directory/nobody-here@example.com", content_type=None),
        404,
    ),
    # framing
    Case("Transfer-Encoding gzip", lambda t: enroll(t, good_csr(t), headers=[("Transfer-Encoding", "gzip")]), 400),
    Case(
        "Content-Length and chunked together",
        lambda t: enroll(t, b"5\r\nMIIB=\r\n0\r\n\r\n", headers=[("Transfer-Encoding", "chunked")]),
        400,
    ),
    Case(
        "two Authorization headers",
        lambda t: enroll(t, good_csr(t), headers=[("Authorization", basic("victim@example.com", "AAAA-BBBB"))]),
        400,
    ),
    # EST semantics
    Case("serverkeygen without DecryptKeyIdentifier", lambda t: serverkeygen(t, good_csr(t)), 400),
    Case(
        "serverkeygen with a 65-octet DecryptKeyIdentifier",
        lambda t: serverkeygen(t, b64(csr_der(t.key, t.email, b"\x01" * 65))),
        400,
    ),
    Case(
        "keyhistory before serverkeygen",
        lambda t: request(t, "POST", "/hsmkm/est/keyhistory", b64(csr_der(t.key, t.email, os.urandom(16)))),
        409,
    ),
    Case("not HTTP at all", lambda t: RawRequest(b"\x16\x03\x01garbage\r\n\r\n"), 400),
]


def audit_rows(rows: Rows) -> list[tuple[Any, ...]]:
    return sorted(rows["audit"])


def user_id(home: Path, rows: Rows, email: str) -> int:
    (found,) = [r[column(home, "users", "id")] for r in rows["users"] if r[column(home, "users", "email")] == email]
    assert isinstance(found, int)
    return found


def code_row(home: Path, rows: Rows, email: str) -> tuple[Any, ...]:
    uid = user_id(home, rows, email)
    (row,) = [r for r in rows["enrollment_codes"] if r[column(home, "enrollment_codes", "user_id")] == uid]
    return row


def test_the_table_has_at_least_thirty_requests() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_malformed_request_gets_its_4xx_and_changes_nothing(target: Target, case: Case) -> None:
    t = target
    if case.fresh_user or case.counts_attempt:
        email, code = t.fresh_user()
        t = Target(t.server, email, code, t.key)
    before = db_rows(t.server.home)  # the audit log is its table "audit"

    reply = send_raw(t.server.url, t.server.ca_pem, case.make(t))

    assert reply.status == case.status, (reply.status, reply.body)
    assert_one_plain_line(reply)
    if reply.status == 401:
        assert reply.header("www-authenticate") == 'Basic realm="hsmkm"'
    after = db_rows(t.server.home)
    if not case.counts_attempt:
        assert row_difference(before, after) == {}
        return
    # exactly one attempt counted on this code, and one audit entry saying so (the log's
    # head, kept in meta, moved on to it)
    changed = row_difference(before, after)
    assert set(changed) == {"enrollment_codes", "audit", "meta"}, changed
    (old_head,), (new_head,) = changed["meta"]
    assert old_head[0] == new_head[0] == "audit_head"
    assert new_head[1].split(":")[0] == str(int(old_head[1].split(":")[0]) + 1)
    home = t.server.home
    old, new = code_row(home, before, t.email), code_row(home, after, t.email)
    assert changed["enrollment_codes"] == ([old], [new])
    attempts = column(home, "enrollment_codes", "attempts")
    assert new[attempts] == old[attempts] + 1
    assert new[:attempts] + new[attempts + 1 :] == old[:attempts] + old[attempts + 1 :]
    gone, added = changed["audit"]
    assert gone == [] and len(added) == 1
    entry = dict(zip(["seq", "at", "actor", "action", "details"], added[0][:5], strict=True))
    assert [column(home, "audit", n) for n in entry] == list(range(5))
    assert entry["action"] == "code.rejected"
    assert entry["seq"] == int(new_head[1].split(":")[0])
    assert t.email in entry["details"] and t.code not in entry["details"]


def assert_one_plain_line(reply: Reply) -> None:
    text = reply.body.decode("utf-8", errors="replace")
    assert text.strip(), "an empty error body"
    assert len(text.strip().splitlines()) == 1, text
    assert reply.status != 500
    lowered = text.lower()
    for leak in ("traceback", "internal", 'file "', "exception"):
        assert leak not in lowered, text
    ctype = reply.header("content-type").lower()
    if ctype.startswith("application/problem+json"):
        json.loads(text)
    else:
        assert ctype.startswith("text/plain"), ctype


def test_a_wrong_code_from_twenty_connections_counts_to_its_limit_then_the_code_is_burnt(target: Target) -> None:
    email, code = target.fresh_user()
    home = target.server.home
    attempts, max_attempts = (
        column(home, "enrollment_codes", "attempts"),
        column(home, "enrollment_codes", "max_attempts"),
    )
    limit = code_row(home, db_rows(home), email)[max_attempts]
    assert 0 < limit < 20
    body = b64(csr_der(target.key, email))
    wrong = "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ"
    t = Target(target.server, email, code, target.key)
    gate = threading.Barrier(20)
    statuses: list[int] = []
    lock = threading.Lock()

    def attack() -> None:
        raw = enroll(t, body, code=wrong)
        gate.wait()
        status = send_raw(t.server.url, t.server.ca_pem, raw).status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=attack) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert statuses == [403] * 20

    rows = db_rows(target.server.home)
    assert code_row(home, rows, email)[attempts] == limit  # counted exactly up to the limit
    # burnt: the right code is refused now, and counts nothing more
    reply = send_raw(t.server.url, t.server.ca_pem, enroll(t, body))
    assert reply.status == 403
    rows = db_rows(target.server.home)
    assert code_row(home, rows, email)[attempts] == limit
    owner = column(home, "certificates", "user_id")
    assert [c for c in rows["certificates"] if c[owner] == user_id(home, rows, email)] == []


def test_the_server_log_names_no_code_pin_or_private_key(target: Target) -> None:
    # something worth logging first: a successful enrollment and a wrong code
    email, code = target.fresh_user()
    t = Target(target.server, email, code, target.key)
    assert send_raw(t.server.url, t.server.ca_pem, enroll(t, b64(csr_der(t.key, email)))).status == 200
    assert send_raw(t.server.url, t.server.ca_pem, enroll(t, good_csr(t), code="WRONG-WRONG-WRONG")).status == 403
    log = target.server.log_text()
    assert "/.well-known/est/simpleenroll" in log  # the access log is there to be searched
    secrets = [target.code, code, trial_pin(target.server.home, "km")]
    for name in ("officer1", "officer2", "officer3"):
        secrets.append(trial_pin(target.server.home, name))
    for secret in secrets:
        assert secret not in log
        assert secret.replace("-", "") not in log
    assert "PRIVATE KEY" not in log
    assert "Traceback" not in log
    assert "WRONG-WRONG-WRONG" not in log


def test_after_the_abuse_the_audit_log_verifies_entry_for_entry(target: Target) -> None:
    verified = hsmkm("--json", "audit", "verify", home=target.server.home).json()
    assert verified["ok"] is True and verified["findings"] == []
    assert verified["entries"] == len(db_rows(target.server.home)["audit"])
