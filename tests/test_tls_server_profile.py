"""The TLS server certificate ``hsmkm serve`` gets from the KM CA: RFC 5280 lint clean, openssl
verifies it for sslserver and its names, a real TLS handshake checks host names and IP
addresses against it, and what it must not be (RSA, long-lived, unnamed) is refused."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from est_helpers import NOW, ec_key, make_ca, openssl, pem, rsa_key
from hsmkm import errors
from hsmkm.keys.base import KeyEntry
from hsmkm.x509 import tls_server

BIN = Path(sys.executable).parent
NAMES = ["km.example.com", "127.0.0.1", "::1"]
CRL = "http://pki.example.com/hsmkm/crl/full.crl"
CA_URL = "http://pki.example.com/hsmkm/ca.crt"


@pytest.fixture(scope="module", params=["p256", "rsa3072"])
def ca(request: pytest.FixtureRequest) -> KeyEntry:
    return make_ca(ec_key() if request.param == "p256" else rsa_key(3072))


def _server(ca: KeyEntry, names: list[str] = NAMES) -> tuple[x509.Certificate, object]:
    key = tls_server.new_key()
    cert = tls_server.build_tls_server_certificate(
        names, key.public_key(), ca.certificate, ca.key, NOW, crl_url=CRL, ca_issuers_url=CA_URL
    )
    return cert, key


def _lint(tool: str, path: Path, *args: str) -> list[str]:
    out = subprocess.run(
        [str(BIN / tool), "lint", *args, "-s", "WARNING", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode >= 0 and out.stderr == "", out.stderr  # pkilint exits with a findings count
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ")]


def test_profile_extensions(ca: KeyEntry) -> None:
    cert, key = _server(ca)
    ext = cert.extensions
    assert (
        ext.get_extension_for_class(x509.BasicConstraints).critical
        and not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    )
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment and not ku.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["km.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= tls_server.VALIDITY + timedelta(minutes=5)
    assert isinstance(cert.public_key(), type(key.public_key()))  # type: ignore[attr-defined]
    cert.verify_directly_issued_by(ca.certificate)


def test_rfc5280_lint_clean(ca: KeyEntry, tmp_path: Path) -> None:
    cert, _ = _server(ca)
    (tmp_path / "srv.pem").write_bytes(pem(cert))
    assert _lint("lint_pkix_cert", tmp_path / "srv.pem") == []


def test_cabf_lint_finds_only_the_deliberate_private_pki_choices(ca: KeyEntry, tmp_path: Path) -> None:
    """The CA/Browser Forum's baseline rules are for public CAs; measured against them, the only
    findings are the choices a private CA makes on purpose (no BR policy OID; a CN for display;
    an SKI). Loopback and other internal addresses, which a KM may well listen on, it flags too."""
    cert, _ = _server(ca, ["km.example.com"])
    (tmp_path / "srv.pem").write_bytes(pem(cert))
    assert sorted(_lint("lint_cabf_serverauth_cert", tmp_path / "srv.pem", "-t", "DV-FINAL-CERTIFICATE")) == [
        "cabf.serverauth.dv.common_name_attribute_present",
        "cabf.serverauth.subscriber.certificate_policies_extension_absent",
        "cabf.serverauth.subscriber.subject_key_identifier_extension_present",
    ]


def test_a_name_too_long_for_a_cn_leaves_the_subject_empty_and_the_san_critical(ca: KeyEntry, tmp_path: Path) -> None:
    long_name = ("k" * 60 + ".") * 3 + "example.com"
    cert, _ = _server(ca, [long_name, "127.0.0.1"])
    assert cert.subject == x509.Name([])
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    (tmp_path / "srv.pem").write_bytes(pem(cert))
    (tmp_path / "ca.pem").write_bytes(pem(ca.certificate))
    assert _lint("lint_pkix_cert", tmp_path / "srv.pem") == []
    verify = ["verify", "-purpose", "sslserver", "-CAfile", str(tmp_path / "ca.pem"), "-verify_hostname", long_name]
    assert openssl(*verify, str(tmp_path / "srv.pem")).returncode == 0


def test_openssl_verifies_it_for_sslserver_and_its_names(ca: KeyEntry, tmp_path: Path) -> None:
    cert, _ = _server(ca)
    (tmp_path / "ca.pem").write_bytes(pem(ca.certificate))
    (tmp_path / "srv.pem").write_bytes(pem(cert))
    base = ["verify", "-purpose", "sslserver", "-CAfile", str(tmp_path / "ca.pem")]
    assert openssl(*base, str(tmp_path / "srv.pem")).returncode == 0
    assert openssl(*base, "-verify_hostname", "km.example.com", str(tmp_path / "srv.pem")).returncode == 0
    assert openssl(*base, "-verify_ip", "::1", str(tmp_path / "srv.pem")).returncode == 0
    assert openssl(*base, "-verify_hostname", "other.example.com", str(tmp_path / "srv.pem")).returncode != 0
    assert openssl(*base, "-verify_ip", "127.0.0.2", str(tmp_path / "srv.pem")).returncode != 0
    # it is no client or S/MIME certificate
    client = ["verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "srv.pem")]
    assert openssl(*client).returncode != 0
    assert (
        openssl(
            "verify", "-purpose", "smimesign", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "srv.pem")
        ).returncode
        != 0
    )


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> str:
    """A TLS handshake over a socket pair and one echoed message; returns the TLS version."""
    a, b = socket.socketpair()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(s.recv(5))
        except (ssl.SSLError, OSError) as exc:
            failure.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            c.sendall(b"hello")
            assert c.recv(5) == b"hello"
            return str(c.version())
    finally:
        b.close()
        thread.join(timeout=30)


def test_a_tls_client_trusting_the_km_ca_accepts_it(ca: KeyEntry, tmp_path: Path) -> None:
    cert, key = _server(ca)
    (tmp_path / "srv.pem").write_bytes(pem(cert))
    (tmp_path / "srv.key").write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    client_ctx = ssl.create_default_context(cadata=pem(ca.certificate).decode())
    for name in ("km.example.com", "127.0.0.1", "::1"):
        assert _handshake(server_ctx, client_ctx, name) in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(server_ctx, client_ctx, "other.example.com")
    stranger = ssl.create_default_context(cadata=pem(make_ca(ec_key(), "CN=Other CA").certificate).decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, stranger, "km.example.com")


@pytest.mark.parametrize(
    "names",
    [
        [],
        ["localhost"],
        ["km_1.example.com"],
        ["-km.example.com"],
        ["km..example.com"],
        ["1.2.3.999"],
        ["k\u00e9m.example.com"],
        ["a." * 130 + "com"],
        [f"h{i}.example.com" for i in range(17)],
    ],
)
def test_bad_names_are_refused(names: list[str], ca: KeyEntry) -> None:
    with pytest.raises(errors.BadInput):
        _server(ca, names)


def test_only_p256_and_short_validity(ca: KeyEntry) -> None:
    with pytest.raises(errors.UnsupportedAlgorithm):
        tls_server.build_tls_server_certificate(NAMES, ec_key(ec.SECP384R1()).public_key(), ca.certificate, ca.key, NOW)
    with pytest.raises(errors.UnsupportedAlgorithm):
        not_ec = cast(ec.EllipticCurvePublicKey, rsa_key().public_key())  # what an untyped caller could pass
        tls_server.build_tls_server_certificate(NAMES, not_ec, ca.certificate, ca.key, NOW)
    with pytest.raises(errors.BadInput, match="at most 30 days"):
        tls_server.build_tls_server_certificate(
            NAMES, ec_key().public_key(), ca.certificate, ca.key, NOW, validity=timedelta(days=31)
        )
    # never past the issuer's end
    late = NOW + timedelta(days=364, hours=12)
    cert = tls_server.build_tls_server_certificate(NAMES, ec_key().public_key(), ca.certificate, ca.key, late)
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


_LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(_LABELS, min_size=1, max_size=4), st.sampled_from(["com", "org", "example", "internal"]), st.booleans())
def test_any_ldh_host_name_becomes_a_dns_name(labels: list[str], tld: str, upper: bool) -> None:
    name = ".".join([*labels, tld])
    assert tls_server.general_name(name.upper() if upper else name) == x509.DNSName(name)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_general_name_or_bad_input(text: str) -> None:
    try:
        general = tls_server.general_name(text)
    except errors.BadInput:
        return
    assert isinstance(general, (x509.DNSName, x509.IPAddress))
