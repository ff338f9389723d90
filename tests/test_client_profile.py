"""The client profile and what a client checks before it trusts what a KM sends: the profile's
place (XDG rules) and modes, its one trust anchor, and the validation of recipients'
certificates (real certificates from a real KM, and forgeries of them)."""

from __future__ import annotations

import re
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import hsmkm
from hsmkm import errors
from hsmkm.client.certcheck import check_recipient
from hsmkm.client.crlcache import CrlCache
from hsmkm.client.https import ConnectionLost, HttpClient, with_retries
from hsmkm.client.network import HttpsDirectory, crl_locations
from hsmkm.client.profile import CrlUrls, Profile, check_km_url, default_location, read_ca_certificate
from hsmkm.client.revocation import RevocationChecker, validation_context
from hsmkm.client.sources import CrlSet
from hsmkm.est import multipart

PW = "correct-horse-battery"


@pytest.fixture(scope="module")
def km(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real KM with alice and bob enrolled (locally), bob then revoked and a CRL published."""
    root = tmp_path_factory.mktemp("profile-km")
    home = root / "km"
    hsmkm("init", "--ca-subject", "CN=Profile CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    for name in ("alice", "bob"):
        code = hsmkm("user", "add", f"{name}@example.com", "--json", home=home).json()["code"]
        hsmkm(
            "enroll", "--km", str(home), "--email", f"{name}@example.com", "--code-source", "env:CODE",
            "--keystore", str(root / f"{name}.epf"), "--password-source", "env:PW",
            env={"CODE": code, "PW": PW},
        )  # fmt: skip
    bob_enc = (home / "pub" / "certs" / "bob@example.com.enc.crt").read_bytes()
    (root / "bob.enc.crt").write_bytes(bob_enc)
    hsmkm("user", "revoke", "bob@example.com", "--reason", "keyCompromise", home=home)
    hsmkm("crl", "publish", home=home)
    return {"home": home, "root": root}


def _cert(path: Path) -> x509.Certificate:
    return x509.load_der_x509_certificate(path.read_bytes())


def _ca(km: dict[str, Path]) -> x509.Certificate:
    return _cert(km["home"] / "pub" / "ca.crt")


def _alice(km: dict[str, Path], kind: str = "enc") -> x509.Certificate:
    return _cert(km["home"] / "pub" / "certs" / f"alice@example.com.{kind}.crt")


def _resigned(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate (issuer name, serial, key, extensions) signed by another key: what
    a forger without the CA key can make."""
    forger = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(forger, hashes.SHA256())


def _checker(km: dict[str, Path], cache: Path) -> RevocationChecker:
    class Published:
        def fetch_crls(self) -> CrlSet:
            return CrlSet((km["home"] / "pub" / "crl" / "full.crl").read_bytes(), None)

    return RevocationChecker(CrlCache(cache), Published(), _ca(km), lambda _w: None)


# --- where the profile is ----------------------------------------------------------------


def test_the_profile_is_found_by_the_xdg_rules(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_location({}, home) == home / ".config" / "hsmkm"
    assert default_location({"XDG_CONFIG_HOME": "/x/conf"}, home) == Path("/x/conf/hsmkm")
    assert default_location({"XDG_CONFIG_HOME": "relative/conf"}, home) == home / ".config" / "hsmkm"
    assert default_location({"HSMKM_PROFILE": "/p", "XDG_CONFIG_HOME": "/x"}, home) == Path("/p")


def test_the_trust_anchor_is_kept_private_and_replaced_only_when_given(km: dict[str, Path], tmp_path: Path) -> None:
    profile = Profile(tmp_path / "profile")
    assert profile.ca_certificate() is None and not profile.exists()
    with pytest.raises(errors.NotFound, match="--ca-cert"):
        profile.require_ca()
    ca = _ca(km)
    assert profile.trust(ca) is True and profile.trust(ca) is False
    assert profile.require_ca() == ca
    assert stat.S_IMODE(profile.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(profile.ca_path.stat().st_mode) == 0o600
    assert profile.ca_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    profile.set_km_url("https://km.example.com:8443/")
    assert profile.km_url() == "https://km.example.com:8443"
    assert stat.S_IMODE(profile.settings_path.stat().st_mode) == 0o600
    cache = profile.crl_cache(ca)
    assert cache.dir.parent == profile.root / "crl" and stat.S_IMODE(cache.dir.stat().st_mode) == 0o700


def test_only_a_ca_certificate_is_taken_as_the_anchor(km: dict[str, Path]) -> None:
    with pytest.raises(errors.ValidationFailed, match="not a CA certificate"):
        read_ca_certificate(_alice(km).public_bytes(serialization.Encoding.PEM), "--ca-cert")
    with pytest.raises(errors.MalformedInput):
        read_ca_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "--ca-cert")
    damaged = bytearray(_ca(km).public_bytes(serialization.Encoding.DER))
    damaged[-5] ^= 0x01  # the self-signature no longer verifies
    with pytest.raises(errors.MalformedInput):
        read_ca_certificate(bytes(damaged), "--ca-cert")


@pytest.mark.parametrize(
    "url",
    [
        "http://km.example.com",
        "https://user:pw@km.example.com",
        "https://km.example.com/?q=1",
        "https://km.example.com#frag",
        "https://",
        "https://km.example.com:99999",
        "ftp://km.example.com",
    ],
)
def test_a_km_url_is_https_without_credentials(url: str) -> None:
    with pytest.raises(errors.BadInput):
        check_km_url(url)


# --- what a recipient's certificate must be --------------------------------------------------


def test_a_recipient_from_the_km_passes_and_forgeries_of_it_do_not(km: dict[str, Path], tmp_path: Path) -> None:
    ca, alice = _ca(km), _alice(km)
    now = datetime.now(UTC)
    revocation = validation_context(_checker(km, tmp_path / "crl")).revocation
    check_recipient(alice, ca, "alice@example.com", now, revocation)
    check_recipient(alice, ca, "alice@EXAMPLE.com", now, revocation)  # a domain's case does not count
    with pytest.raises(errors.ValidationFailed, match="not issued by the profile's CA"):
        check_recipient(_resigned(alice), ca, "alice@example.com", now, revocation)
    with pytest.raises(errors.ValidationFailed, match=re.escape("does not name bob@example.com")):
        check_recipient(alice, ca, "bob@example.com", now, revocation)  # another user's certificate
    with pytest.raises(errors.ValidationFailed, match="not for encryption"):
        check_recipient(_alice(km, "sign"), ca, "alice@example.com", now, revocation)
    with pytest.raises(errors.ValidationFailed, match="expired or not yet valid"):
        check_recipient(alice, ca, "alice@example.com", alice.not_valid_after_utc + timedelta(seconds=1), revocation)


def test_a_revoked_recipient_is_refused(km: dict[str, Path], tmp_path: Path) -> None:
    bob = _cert(km["root"] / "bob.enc.crt")
    revocation = validation_context(_checker(km, tmp_path / "crl")).revocation
    with pytest.raises(errors.CertificateRevoked, match="keyCompromise"):
        check_recipient(bob, _ca(km), "bob@example.com", datetime.now(UTC), revocation)


def test_offline_the_cached_recipient_is_used_only_while_it_is_still_valid(km: dict[str, Path], tmp_path: Path) -> None:
    """A KM that cannot be reached (a real connection to a port nobody listens on)."""
    ca, alice = _ca(km), _alice(km)
    profile = Profile(tmp_path / "profile")
    profile.trust(ca)
    warnings: list[str] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        http = HttpClient(f"https://127.0.0.1:{port}", ca)
        revocation = validation_context(_checker(km, tmp_path / "crl")).revocation
        clock = [datetime.now(UTC)]
        directory = HttpsDirectory(http, ca, profile.recipients(), revocation, warnings.append, lambda: clock[0])
        with pytest.raises(errors.Unreachable, match=re.escape("no certificate of alice@example.com is cached")):
            directory.encryption_certificate("alice@example.com")
        profile.recipients().put("alice@example.com", alice)
        assert stat.S_IMODE((profile.recipients_dir / "alice@example.com.enc.crt").stat().st_mode) == 0o600
        assert directory.encryption_certificate("alice@example.com") == alice
        assert len(warnings) == 1 and "cached certificate of alice@example.com" in warnings[0]
        profile.recipients().put("alice@example.com", _resigned(alice))  # the cache is no trust anchor
        with pytest.raises(errors.ValidationFailed):
            directory.encryption_certificate("alice@example.com")
        profile.recipients().put("alice@example.com", alice)
        clock[0] = alice.not_valid_after_utc + timedelta(days=1)
        with pytest.raises(errors.ValidationFailed, match="expired"):
            directory.encryption_certificate("alice@example.com")


# --- the pieces of the network client ------------------------------------------------------


def test_a_lost_connection_is_retried_a_bounded_number_of_times() -> None:
    calls: list[int] = []

    def flaky(fail: int) -> str:
        calls.append(1)
        if len(calls) <= fail:
            raise ConnectionLost("reset")
        return "answer"

    assert with_retries(lambda: flaky(2), attempts=3, pause=0) == "answer" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionLost):
        with_retries(lambda: flaky(5), attempts=3, pause=0)
    assert len(calls) == 3
    calls.clear()

    def refused() -> str:
        calls.append(1)
        raise errors.CodeRejected("no")

    with pytest.raises(errors.CodeRejected):
        with_retries(refused, attempts=3, pause=0)
    assert len(calls) == 1  # a refusal is an answer: never sent again


def test_crls_are_looked_for_at_the_distribution_points_then_at_the_km(km: dict[str, Path]) -> None:
    alice = _alice(km)
    found = crl_locations([CrlUrls("http://crl.example/full.crl", None)], "https://km:8443", [alice])
    assert [loc.full for loc in found] == [
        "http://hsmkm.localhost/crl/full.crl",
        "http://crl.example/full.crl",
        "https://km:8443/crl/full.crl",
    ]
    assert found[0].delta == "http://hsmkm.localhost/crl/delta.crl"


def test_a_key_history_answer_is_read_pair_by_pair() -> None:
    pairs = [multipart.ServerKeygenParts(bytes([i]) * 40, bytes([100 + i]) * 30) for i in range(3)]
    encoded = multipart.encode_many(pairs)
    assert multipart.parse_many(encoded.content_type, encoded.body) == pairs
    with pytest.raises(errors.MalformedInput):
        multipart.parse(encoded.content_type, encoded.body)  # serverkeygen: exactly one pair
    cut = encoded.body.rsplit(b"--est-", 2)[0] + b"--" + encoded.content_type.split("boundary=")[1].encode() + b"--\r\n"
    with pytest.raises(errors.MalformedInput):
        multipart.parse_many(encoded.content_type, cut)  # a key part without its certificate part


# --- the command line -----------------------------------------------------------------------


def test_the_command_line_refuses_what_it_cannot_trust_and_writes_no_profile(
    km: dict[str, Path], tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    alice_cert = tmp_path / "alice.crt"
    alice_cert.write_bytes(_alice(km).public_bytes(serialization.Encoding.PEM))
    cases = [
        (["--km", "http://127.0.0.1:1"], "must be https://"),
        (["--km", str(km["home"]), "--ca-cert", str(alice_cert)], "for a KM reached by URL"),
        ([], "name the KM with --km"),
        (["--km", "https://127.0.0.1:1"], "has no CA certificate: give it once with --ca-cert"),
        (["--km", "https://127.0.0.1:1", "--ca-cert", str(alice_cert)], "not a CA certificate"),
        (["--km", "https://u:p@127.0.0.1:1"], "no user or password"),
    ]
    for args, why in cases:
        run = hsmkm("crl", "fetch", "--profile", str(profile), *args, check=False)
        assert run.returncode in (1, 2) and why in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
        assert not profile.exists(), args


def test_a_km_home_still_works_as_before_and_leaves_the_profile_alone(km: dict[str, Path], tmp_path: Path) -> None:
    env = {"HSMKM_PROFILE": str(tmp_path / "profile"), "HSMKM_CACHE": str(tmp_path / "cache")}
    out = hsmkm("crl", "fetch", "--km", str(km["home"]), "--json", env=env).json()
    assert out["full"] is not None and Path(out["cache"]).is_relative_to(tmp_path / "cache")
    assert not (tmp_path / "profile").exists()
