"""``GET /directory/{email}``: a user's current certificates — one DER by ``?use=`` for
``application/pkix-cert``, a JSON list for ``application/json``, else a PEM bundle of both —
and 404 (problem JSON on the JSON path) when the address is unknown or its certificates are
revoked."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import hsmkm
from server_harness import RunningServer, init_km, running_server

ALICE = "alice@example.com"
CAROL = "carol@example.com"


def enroll(home: Path, email: str, code: str, folder: Path) -> None:
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(folder / f"{email}.epf"),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": "directory test password"},
    )


def published(home: Path, email: str, suffix: str) -> bytes:
    return next((home / "pub" / "certs").glob(f"{email}*{suffix}")).read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("directory")
    home = folder / "home"
    codes = init_km(home, (ALICE, CAROL, "dave@example.com"))
    enroll(home, ALICE, codes[ALICE], folder)
    enroll(home, CAROL, codes[CAROL], folder)
    hsmkm("user", "revoke", CAROL, home=home)
    with running_server(home) as running:
        yield running


def current(server: RunningServer, email: str) -> dict[str, x509.Certificate]:
    """What ``directory show`` says (the CLI reading the database), by use."""
    out = hsmkm("directory", "show", email, home=server.home).stdout.encode()
    certs = x509.load_pem_x509_certificates(out)
    by_use = {}
    for cert in certs:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        by_use["signing" if usage.digital_signature else "encryption"] = cert
    return by_use


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_one_certificate_by_use_as_pkix_cert(server: RunningServer) -> None:
    expected = current(server, ALICE)
    for query, use in (("", "encryption"), ("?use=encryption", "encryption"), ("?use=signing", "signing")):
        answer = server.get(f"/directory/{ALICE}{query}", headers={"Accept": "application/pkix-cert"})
        assert answer.status == 200
        assert answer.header("content-type") == "application/pkix-cert"
        assert answer.body == der(expected[use])


def test_a_json_list_of_both(server: RunningServer) -> None:
    answer = server.get(f"/directory/{ALICE}", headers={"Accept": "application/json"})
    assert answer.status == 200
    assert answer.header("content-type") == "application/json"
    document = json.loads(answer.body)
    assert document["email"] == ALICE
    expected = current(server, ALICE)
    got = {c["use"]: c for c in document["certificates"]}
    assert set(got) == {"encryption", "signing"}
    for use, cert in expected.items():
        assert base64.b64decode(got[use]["der"]) == der(cert)
        assert int(got[use]["serial"], 16) == cert.serial_number
        assert got[use]["not_after"] == cert.not_valid_after_utc.isoformat()


@pytest.mark.parametrize("accept", [None, "*/*", "application/pem-certificate-chain", "text/html"])
def test_otherwise_a_pem_bundle_of_both(server: RunningServer, accept: str | None) -> None:
    answer = server.get(f"/directory/{ALICE}", headers={"Accept": accept} if accept else {})
    assert answer.status == 200
    assert answer.header("content-type") == "application/pem-certificate-chain"
    bundle = x509.load_pem_x509_certificates(answer.body)
    assert sorted(der(c) for c in bundle) == sorted(der(c) for c in current(server, ALICE).values())
    assert der(bundle[0]) == der(current(server, ALICE)["encryption"])


def test_accept_weights_choose(server: RunningServer) -> None:
    answer = server.get(f"/directory/{ALICE}", headers={"Accept": "application/json;q=0.5, application/pkix-cert"})
    assert answer.header("content-type") == "application/pkix-cert"
    answer = server.get(f"/directory/{ALICE}", headers={"Accept": "application/pkix-cert;q=0, application/json"})
    assert answer.header("content-type") == "application/json"


def test_a_percent_encoded_address_is_the_same_address(server: RunningServer) -> None:
    answer = server.get("/directory/alice%40example.com", headers={"Accept": "application/pkix-cert"})
    assert answer.status == 200
    assert answer.body == der(current(server, ALICE)["encryption"])


@pytest.mark.parametrize(
    "email", ["nobody@example.com", CAROL, "dave@example.com"], ids=["unknown", "revoked", "not-enrolled"]
)
@pytest.mark.parametrize("accept", ["application/pkix-cert", "application/json", "*/*"])
def test_unknown_revoked_or_not_enrolled_is_404(server: RunningServer, email: str, accept: str) -> None:
    answer = server.get(f"/directory/{email}", headers={"Accept": accept})
    assert answer.status == 404
    if accept == "application/json":
        assert answer.header("content-type") == "application/problem+json"
        problem = json.loads(answer.body)
        assert problem["status"] == 404 and problem["title"] == "Not Found"
    else:
        assert answer.header("content-type") == "text/plain; charset=utf-8"
        assert answer.body.count(b"\n") == 1


def test_revocation_takes_an_address_out_of_the_directory_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    codes = init_km(home)
    enroll(home, ALICE, codes[ALICE], tmp_path)
    with running_server(home) as server:
        assert server.get(f"/directory/{ALICE}").status == 200
        hsmkm("user", "revoke", ALICE, home=home)
        assert server.get(f"/directory/{ALICE}").status == 404


@pytest.mark.parametrize("query", ["?use=both", "?use=", "?use=ENCRYPTION"])
def test_a_bad_use_is_400(server: RunningServer, query: str) -> None:
    answer = server.get(f"/directory/{ALICE}{query}", headers={"Accept": "application/pkix-cert"})
    assert answer.status == 400
    assert answer.body.count(b"\n") == 1


@pytest.mark.parametrize("email", ["not-an-address", "a@b@c", "%00alice@example.com", "x" * 300 + "@example.com"])
def test_a_malformed_address_is_a_4xx_of_one_line(server: RunningServer, email: str) -> None:
    answer = server.get(f"/directory/{email}")
    assert answer.status in (400, 404)
    assert answer.body.count(b"\n") == 1
    assert b"Traceback" not in answer.body
