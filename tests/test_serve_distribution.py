"""``hsmkm serve`` distributes the CA certificate and the CRLs at the paths the certificates
name (over HTTPS, and over plain HTTP where the CDP's ``http://`` URL points), the bytes the
database holds, with ETag, Last-Modified, 304 on a conditional GET and Cache-Control until the
CRL's nextUpdate; and the EST cacerts and csrattrs. The plain listener serves nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import hsmkm
from hsmkm.est import certsonly, csrattrs, transfer
from server_harness import RunningServer, init_km, running_server

DISTRIBUTED = ["/ca.crt", "/crl/full.crl", "/crl/delta.crl"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("dist") / "home"
    init_km(home)
    hsmkm("crl", "publish", home=home)
    hsmkm("crl", "publish", "--delta", home=home)
    with running_server(home, http=True) as running:
        yield running


def published(home: Path, path: str) -> bytes:
    return (home / "pub" / path.lstrip("/")).read_bytes()


def test_health_answers_ok(server: RunningServer) -> None:
    answer = server.get("/hsmkm/health")
    assert (answer.status, answer.body) == (200, b"ok\n")


@pytest.mark.parametrize("path", DISTRIBUTED)
@pytest.mark.parametrize("plain", [False, True], ids=["https", "http"])
def test_each_artifact_is_the_databases_bytes_with_its_validators(
    server: RunningServer, path: str, plain: bool
) -> None:
    answer = server.get(path, plain=plain)
    assert answer.status == 200
    assert answer.body == published(server.home, path)
    assert answer.header("content-type") == ("application/pkix-cert" if path == "/ca.crt" else "application/pkix-crl")
    assert answer.header("etag") == f'"{hashlib.sha256(answer.body).hexdigest()}"'
    assert parsedate_to_datetime(answer.header("last-modified") or "").tzinfo is not None
    assert (answer.header("cache-control") or "").startswith("public, max-age=")


@pytest.mark.parametrize("path", ["/crl/full.crl", "/crl/delta.crl"])
def test_a_crl_may_be_cached_until_its_next_update(server: RunningServer, path: str) -> None:
    answer = server.get(path)
    crl = x509.load_der_x509_crl(answer.body)
    max_age = int((answer.header("cache-control") or "").split("max-age=")[1])
    next_update = crl.next_update_utc
    assert next_update is not None
    left = next_update - datetime.now(UTC)
    # never past nextUpdate; at most the time this request took short of it
    assert left - timedelta(minutes=5) <= timedelta(seconds=max_age) <= left
    assert parsedate_to_datetime(answer.header("last-modified") or "") == crl.last_update_utc


@pytest.mark.parametrize("path", DISTRIBUTED)
def test_a_conditional_get_with_the_etag_is_not_modified(server: RunningServer, path: str) -> None:
    first = server.get(path)
    etag = first.header("etag") or ""
    for inm in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        again = server.get(path, headers={"If-None-Match": inm})
        assert again.status == 304, inm
        assert again.body == b""
        assert again.header("etag") == etag
        assert (again.header("cache-control") or "").startswith("public, max-age=")
    assert server.get(path, headers={"If-None-Match": '"something-else"'}).status == 200


@pytest.mark.parametrize("path", DISTRIBUTED)
def test_if_modified_since_compares_with_last_modified(server: RunningServer, path: str) -> None:
    last_modified = server.get(path).header("last-modified") or ""
    when = parsedate_to_datetime(last_modified)
    assert server.get(path, headers={"If-Modified-Since": last_modified}).status == 304
    later = format_datetime(when + timedelta(hours=1), usegmt=True)
    assert server.get(path, headers={"If-Modified-Since": later}).status == 304
    earlier = format_datetime(when - timedelta(seconds=1), usegmt=True)
    assert server.get(path, headers={"If-Modified-Since": earlier}).status == 200
    assert server.get(path, headers={"If-Modified-Since": "not a date"}).status == 200


def test_if_none_match_takes_precedence_over_if_modified_since(server: RunningServer) -> None:
    last_modified = server.get("/crl/full.crl").header("last-modified") or ""
    answer = server.get("/crl/full.crl", headers={"If-None-Match": '"stale"', "If-Modified-Since": last_modified})
    assert answer.status == 200


def test_head_gives_the_headers_without_the_body(server: RunningServer) -> None:
    answer = server.request("HEAD", "/crl/full.crl")
    assert answer.status == 200
    assert answer.body == b""
    assert answer.header("content-length") == str(len(published(server.home, "/crl/full.crl")))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_artifacts_are_read_only(server: RunningServer, method: str) -> None:
    answer = server.request(method, "/crl/full.crl", body=b"x")
    assert answer.status == 405
    assert answer.body == b"Method Not Allowed\n"
    assert set((answer.header("allow") or "").replace(" ", "").split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize("path", ["/", "/crl/", "/crl/other.crl", "/.well-known/est/fullcmc", "/pub/ca.crt"])
def test_an_unknown_path_is_404_of_one_line(server: RunningServer, path: str) -> None:
    answer = server.get(path)
    assert (answer.status, answer.body) == (404, b"Not Found\n")


@pytest.mark.parametrize("path", ["/.well-known/est/cacerts", "/.well-known/est/csrattrs", "/hsmkm/health"])
def test_the_plain_listener_serves_only_the_artifacts(server: RunningServer, path: str) -> None:
    assert server.get(path).status == 200
    assert server.get(path, plain=True).status == 404
    auth = ("alice@example.com", "WRONG-CODE")
    for post in ("/.well-known/est/simpleenroll", "/directory/alice@example.com"):
        assert server.request("POST" if "est" in post else "GET", post, auth=auth, plain=True).status == 404


def test_cacerts_is_the_ca_certificate_in_a_certs_only_pkcs7(server: RunningServer) -> None:
    answer = server.get("/.well-known/est/cacerts")
    assert answer.status == 200
    assert answer.header("content-type") == "application/pkcs7-mime; smime-type=certs-only"
    certs = certsonly.decode(transfer.decode(answer.body, 1 << 20, "cacerts"))
    assert [c.public_bytes(serialization.Encoding.DER) for c in certs] == [published(server.home, "/ca.crt")]


def test_csrattrs_names_the_key_types_and_the_decrypt_key_identifier(server: RunningServer) -> None:
    answer = server.get("/.well-known/est/csrattrs")
    assert answer.status == 200
    assert answer.header("content-type") == "application/csrattrs"
    attrs = csrattrs.decode(transfer.decode(answer.body, 1 << 16, "csrattrs"))
    assert csrattrs.OID_DECRYPT_KEY_ID in attrs.oids
    assert attrs.key_algorithms()


def test_a_new_crl_is_served_at_once_and_the_old_etag_no_longer_matches(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_km(home)
    with running_server(home) as server:
        missing = server.get("/crl/full.crl")
        assert missing.status == 404
        assert missing.body.count(b"\n") == 1
        hsmkm("crl", "publish", home=home)
        first = server.get("/crl/full.crl")
        assert first.status == 200
        hsmkm("crl", "publish", home=home)
        second = server.get("/crl/full.crl", headers={"If-None-Match": first.header("etag") or ""})
        assert second.status == 200
        assert second.body == published(home, "/crl/full.crl") != first.body
        assert second.header("etag") != first.header("etag")
