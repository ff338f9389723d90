"""The client's HTTPS against a real ``hsmkm serve``: it trusts only the profile's CA and checks
the host name, bounds what it reads, and answers each status as the hsmkm error it means."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509

from hsmkm import errors
from hsmkm.client.est_enroll import EstClient, check_ca
from hsmkm.client.https import HttpClient
from server_harness import RunningServer


def _ca(server: RunningServer) -> x509.Certificate:
    return x509.load_pem_x509_certificate(server.ca_pem.read_bytes())


def test_only_the_profile_ca_and_the_right_host_name_are_trusted(km_server: RunningServer, km_home: Path) -> None:
    ok = HttpClient(km_server.url, _ca(km_server)).request("GET", "/hsmkm/health")
    assert ok.status == 200 and ok.body.strip() == b"ok"
    other = x509.load_der_x509_certificate((km_home / "pub" / "ca.crt").read_bytes())  # another KM's CA
    with pytest.raises(errors.ValidationFailed, match="not trusted by the profile's CA"):
        HttpClient(km_server.url, other).request("GET", "/hsmkm/health")
    port = km_server.url.rsplit(":", 1)[1]
    with pytest.raises(errors.ValidationFailed, match="not trusted"):  # the certificate names 127.0.0.1 only
        HttpClient(f"https://localhost:{port}", _ca(km_server)).request("GET", "/hsmkm/health")


def test_an_answer_over_the_limit_is_refused(km_server: RunningServer) -> None:
    client = HttpClient(km_server.url, _ca(km_server))
    assert client.request("GET", "/ca.crt").status == 200
    with pytest.raises(errors.MalformedInput, match="at most 10"):
        client.request("GET", "/ca.crt", limit=10)


def test_statuses_become_hsmkm_errors_with_the_server_line(km_server: RunningServer) -> None:
    est = EstClient(HttpClient(km_server.url, _ca(km_server)), pause=0)
    check_ca(est.cacerts(), _ca(km_server))
    resp = est.http.request(
        "POST", "/.well-known/est/simpleenroll", body=b"AAAA", headers={"Content-Type": "application/pkcs10"}
    )
    assert resp.status == 401  # no credentials
    with pytest.raises(errors.NotFound):
        est._send("GET", "/directory/nobody@example.com", "the directory")
    with pytest.raises(errors.BadInput, match=re.escape("EST simpleenroll: the CSR: not a PKCS#10 request")):
        est.simple_enroll("alice@example.com", "not-the-code", b"\x30\x00")  # 400, and the server's one line


def test_a_server_that_is_not_there_is_unreachable(km_server: RunningServer) -> None:
    url = km_server.url
    km_server.stop()
    with pytest.raises(errors.Unreachable, match="cannot connect"):
        HttpClient(url, _ca(km_server)).request("GET", "/hsmkm/health")
