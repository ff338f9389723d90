"""Revocation: revoke, HSM-signed full and delta CRLs, the client's CRL cache and its index."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import hsmkm
from hsmkm import errors
from hsmkm.client.crlcache import CrlCache
from hsmkm.x509 import profiles
from hsmkm.x509.crl import RevocationReason, RevokedEntry, build_crl
from hsmkm.x509.crlparse import parse_crl

PW = "correct-horse-battery"
LINT_CRL = str(Path(sys.executable).parent / "lint_crl")


def _enroll(home: Path, email: str, epf: Path) -> None:
    code = hsmkm("user", "add", email, "--json", home=home).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )


@pytest.fixture(scope="module")
def revoked_km(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("revocation")
    home = root / "km"
    hsmkm("init", "--ca-subject", "CN=Revocation CA,O=hsmkm tests", "--ca-key", "rsa2048", home=home)
    for name in ("alice", "bob", "carol"):
        _enroll(home, f"{name}@example.com", root / f"{name}.epf")
    hsmkm("user", "revoke", "bob@example.com", "--reason", "keyCompromise", home=home)
    hsmkm("crl", "publish", home=home)
    hsmkm("user", "revoke", "carol@example.com", "--reason", "affiliationChanged", home=home)
    hsmkm("crl", "publish", "--delta", home=home)
    ca = x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes())
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for kind in ("full", "delta"):
        crl = x509.load_der_x509_crl((home / "pub" / "crl" / f"{kind}.crl").read_bytes())
        (root / f"{kind}.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    for name in ("alice", "bob", "carol"):
        cert = (
            x509.load_der_x509_certificate((home / "pub" / "certs" / f"{name}@example.com.sign.crt").read_bytes())
            if (home / "pub" / "certs" / f"{name}@example.com.sign.crt").exists()
            else None
        )
        if cert is None:
            der = hsmkm("user", "show", f"{name}@example.com", "--json", home=home).json()
            serial = next(c["serial"] for c in der["certificates"] if c["kind"] == "sign")
            import sqlite3

            with sqlite3.connect(home / "km.db") as conn:
                cert = x509.load_der_x509_certificate(
                    conn.execute("SELECT der FROM certificates WHERE serial = ?", (serial,)).fetchone()[0]
                )
        (root / f"{name}.sign.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"home": home, "root": root}


@pytest.mark.slow
@pytest.mark.interop
def test_openssl_verifies_the_crl_signatures(revoked_km: dict[str, Path]) -> None:
    for kind in ("full", "delta"):
        proc = subprocess.run(
            [
                "openssl",
                "crl",
                "-inform",
                "DER",
                "-in",
                str(revoked_km["home"] / "pub/crl" / f"{kind}.crl"),
                "-CAfile",
                str(revoked_km["root"] / "ca.pem"),
                "-noout",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0 and "verify OK" in proc.stdout + proc.stderr


@pytest.mark.interop
def test_openssl_verify_crl_check_rejects_the_revoked_and_accepts_the_others(revoked_km: dict[str, Path]) -> None:
    root = revoked_km["root"]
    base = ["openssl", "verify", "-crl_check", "-CAfile", str(root / "ca.pem"), "-CRLfile", str(root / "full.pem")]
    bob = subprocess.run([*base, str(root / "bob.sign.pem")], capture_output=True, text=True)
    assert bob.returncode != 0 and "certificate revoked" in bob.stdout + bob.stderr
    alice = subprocess.run([*base, str(root / "alice.sign.pem")], capture_output=True, text=True)
    assert alice.returncode == 0, alice.stdout + alice.stderr


def test_pkilint_reports_nothing_on_full_and_delta(revoked_km: dict[str, Path]) -> None:
    for kind in ("full", "delta"):
        proc = subprocess.run(
            [
                LINT_CRL,
                "lint",
                "-t",
                "CRL",
                "-p",
                "PKIX",
                "-s",
                "WARNING",
                str(revoked_km["home"] / "pub/crl" / f"{kind}.crl"),
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout


def test_full_and_delta_contents_as_cryptography_reads_them(revoked_km: dict[str, Path]) -> None:
    home = revoked_km["home"]
    full = x509.load_der_x509_crl((home / "pub/crl/full.crl").read_bytes())
    delta = x509.load_der_x509_crl((home / "pub/crl/delta.crl").read_bytes())
    assert len(full) == 2 and len(delta) == 2  # bob's two certificates; carol's two
    assert full.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == 1
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).critical
    assert delta.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    reasons = {r.extensions.get_extension_for_class(x509.CRLReason).value.reason for r in delta}
    assert reasons == {x509.ReasonFlags.affiliation_changed}
    ca = x509.load_der_x509_certificate((home / "pub/ca.crt").read_bytes())
    assert full.is_signature_valid(ca.public_key()) and delta.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    freshest = full.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest[0].full_name[0].value.endswith("/crl/delta.crl")


def test_crl_check_names_the_revocation_and_the_cache_merges_the_delta(
    revoked_km: dict[str, Path], tmp_path: Path
) -> None:
    home, root = revoked_km["home"], revoked_km["root"]
    cache = tmp_path / "cache"
    hsmkm("crl", "fetch", "--km", str(home), "--cache", str(cache))
    bob = hsmkm("crl", "check", "--km", str(home), "--cache", str(cache), str(root / "bob.sign.pem"), check=False)
    assert bob.returncode == 1 and "revoked on" in bob.stderr and "keyCompromise" in bob.stderr
    carol = hsmkm("crl", "check", "--km", str(home), "--cache", str(cache), str(root / "carol.sign.pem"), check=False)
    assert carol.returncode == 1 and "affiliationChanged" in carol.stderr  # only in the delta
    alice = hsmkm("crl", "check", "--km", str(home), "--cache", str(cache), str(root / "alice.sign.pem"))
    assert alice.returncode == 0


def _ca(kind: str = "rsa"):  # type: ignore[no-untyped-def]
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = profiles.build_ca_certificate(
        x509.Name.from_rfc4514_string(f"CN=Test {kind} CA"),
        key.public_key(),
        key,
        profiles.random_serial(),
        now,
        now + timedelta(days=30),
    )
    return key, cert


def test_cache_refuses_bad_crls_and_keeps_answering(tmp_path: Path) -> None:
    key, ca = _ca()
    now = datetime.now(UTC).replace(microsecond=0)
    revoked = [RevokedEntry(profiles.random_serial(), now, RevocationReason.KEY_COMPROMISE) for _ in range(50)]
    good = build_crl(ca, key, revoked, 5, now, now + timedelta(days=1))
    cache = CrlCache(tmp_path / "cache")
    cache.update(good, None, ca, now)
    target = revoked[7].serial
    assert cache.check(target) is not None and cache.check(target + 1) is None
    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0x01
    older = build_crl(ca, key, [], 4, now, now + timedelta(days=1))
    other_key, _ = _ca()
    wrong = build_crl(ca, other_key, [], 6, now, now + timedelta(days=1))
    for bad, exc in (
        (bytes(tampered), (errors.SignatureInvalid, errors.MalformedInput)),
        (good[:-10], (errors.MalformedInput,)),
        (wrong, (errors.SignatureInvalid,)),
        (older, (errors.ValidationFailed,)),
        (b"garbage", (errors.MalformedInput,)),
    ):
        with pytest.raises(exc):
            cache.update(bad, None, ca, now)
        fresh = CrlCache(tmp_path / "cache")  # the previous cache still answers, also reopened
        info = fresh.check(target)
        assert info is not None and info.reason is RevocationReason.KEY_COMPROMISE
    newer = build_crl(ca, key, revoked[:3], 7, now, now + timedelta(days=1))
    cache.update(newer, None, ca, now)
    assert cache.check(target) is None and cache.check(revoked[1].serial) is not None
    assert cache.status(now + timedelta(days=2)).stale and not cache.status(now).stale


def test_delta_remove_from_crl_and_base_mismatch(tmp_path: Path) -> None:
    key, ca = _ca("ec")
    now = datetime.now(UTC).replace(microsecond=0)
    a, b = profiles.random_serial(), profiles.random_serial()
    full = build_crl(
        ca, key, [RevokedEntry(a, now, RevocationReason.CERTIFICATE_HOLD)], 10, now, now + timedelta(days=1)
    )
    delta = build_crl(
        ca,
        key,
        [RevokedEntry(a, now, RevocationReason.REMOVE_FROM_CRL), RevokedEntry(b, now, RevocationReason.SUPERSEDED)],
        11,
        now,
        now + timedelta(hours=6),
        delta_of=10,
    )
    cache = CrlCache(tmp_path / "c")
    cache.update(full, delta, ca, now)
    assert cache.check(a) is None
    info = cache.check(b)
    assert info is not None and info.reason is RevocationReason.SUPERSEDED
    assert cache.status(now).next_update == now + timedelta(hours=6)


serials = st.integers(min_value=1, max_value=(1 << 159) - 1)
times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


@settings(max_examples=40, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            serials, times, st.sampled_from([r for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL])
        ),
        max_size=30,
        unique_by=lambda t: t[0],
    ),
    number=st.integers(1, 1 << 64),
)
def test_crl_encoder_round_trips_against_cryptography(entries, number) -> None:  # type: ignore[no-untyped-def]
    key, ca = _EC_CA
    now = datetime(2026, 1, 1, tzinfo=UTC)
    revoked = [RevokedEntry(s, t, r) for s, t, r in entries]
    der = build_crl(ca, key, revoked, number, now, now + timedelta(days=1))
    theirs = x509.load_der_x509_crl(der)
    assert theirs.is_signature_valid(ca.public_key())
    assert theirs.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
    got = {r.serial_number: r.revocation_date_utc for r in theirs}
    assert got == {e.serial: e.revoked_at for e in revoked}
    ours = parse_crl(der)
    assert ours.number == number and list(ours.entries()) == revoked


_EC_CA = _ca("ec")


def test_a_larger_crl_builds_and_indexes(tmp_path: Path) -> None:
    key, ca = _EC_CA
    now = datetime(2026, 1, 1, tzinfo=UTC)
    revoked = [RevokedEntry(profiles.random_serial(), now - timedelta(seconds=i % 1000)) for i in range(50_000)]
    der = build_crl(ca, key, revoked, 1, now, now + timedelta(days=1))
    assert len(x509.load_der_x509_crl(der)) == 50_000
    cache = CrlCache(tmp_path / "big")
    cache.update(der, None, ca, now)
    for e in revoked[::997]:
        info = cache.check(e.serial)
        assert info is not None and info.revoked_at == e.revoked_at
    assert cache.check(1) is None


def test_crl_numbers_increase_under_concurrent_publishers(revoked_km: dict[str, Path]) -> None:
    home = revoked_km["home"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hsmkm.cli", "--home", str(home), "--json", "crl", "publish"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    numbers = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        numbers.append(json.loads(out)["number"])
    assert len(set(numbers)) == 4
    published = parse_crl((home / "pub/crl/full.crl").read_bytes()).number
    assert published == max(numbers)
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


@pytest.mark.slow
def test_crl_fetch_refuses_bad_crls_in_one_line_keeps_the_cache_and_refreshes_when_stale(tmp_path: Path) -> None:
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Fetch CA", "--ca-key", "p256", "--user-key", "p256", home=home)
    _enroll(home, "dan@example.com", tmp_path / "dan.epf")
    cert = tmp_path / "dan.crt"
    cert.write_bytes((home / "pub" / "certs" / "dan@example.com.sign.crt").read_bytes())
    hsmkm("user", "revoke", "dan@example.com", "--reason", "cessationOfOperation", home=home)
    hsmkm("crl", "publish", home=home)
    old = (home / "pub" / "crl" / "full.crl").read_bytes()
    hsmkm("crl", "publish", home=home)
    good = (home / "pub" / "crl" / "full.crl").read_bytes()
    # The client reads a mirror of pub/, so each bad CRL can be put where the good one was.
    mirror = tmp_path / "mirror"
    (mirror / "pub" / "crl").mkdir(parents=True)
    (mirror / "pub" / "ca.crt").write_bytes((home / "pub" / "ca.crt").read_bytes())
    served = mirror / "pub" / "crl" / "full.crl"
    served.write_bytes(good)
    cache = tmp_path / "cache"
    fetched = hsmkm("crl", "fetch", "--km", str(mirror), "--cache", str(cache), "--json").json()
    assert fetched["full"] == parse_crl(good).number and fetched["entries"] == 2  # signing and encryption
    meta = (cache / "meta.json").read_bytes()
    tampered = bytearray(good)
    tampered[-5] ^= 0x40  # inside the signature
    for bad, why in (
        (bytes(tampered), "signature"),
        (good[:-9], "truncated"),
        (old, "older"),
        (b"garbage", "not a DER CertificateList"),
    ):
        served.write_bytes(bad)
        r = hsmkm("crl", "fetch", "--km", str(mirror), "--cache", str(cache), check=False)
        assert r.returncode in (1, 2), r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hsmkm: error:") and why in lines[0], r.stderr
        assert (cache / "meta.json").read_bytes() == meta
        still = hsmkm("crl", "check", "--km", str(mirror), "--cache", str(cache), str(cert), check=False)
        assert still.returncode == 1 and "cessationOfOperation" in still.stderr
    # A good full CRL with a damaged delta: the whole update is refused.
    hsmkm("crl", "publish", "--delta", home=home)
    served.write_bytes(good)
    delta = bytearray((home / "pub" / "crl" / "delta.crl").read_bytes())
    delta[-3] ^= 0x01
    (mirror / "pub" / "crl" / "delta.crl").write_bytes(bytes(delta))
    r = hsmkm("crl", "fetch", "--km", str(mirror), "--cache", str(cache), check=False)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "hsmkm: error: delta CRL: its signature does not verify with the CA's key"
    ]
    assert (cache / "meta.json").read_bytes() == meta
    # A day later (the cache's nextUpdate moved into the past): online, a check refreshes the
    # cache by itself; offline, it answers from the stale cache with a warning.
    (mirror / "pub" / "crl" / "delta.crl").unlink()

    def age_cache() -> None:
        stale = json.loads((cache / "meta.json").read_text())
        stale["next_update"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        (cache / "meta.json").write_text(json.dumps(stale))

    age_cache()
    online = hsmkm("crl", "check", "--km", str(mirror), "--cache", str(cache), str(cert), check=False)
    assert online.returncode == 1 and "stale" not in online.stderr
    refreshed = datetime.fromisoformat(json.loads((cache / "meta.json").read_text())["next_update"])
    assert refreshed > datetime.now(UTC)
    age_cache()
    served.unlink()
    offline = hsmkm("crl", "check", "--km", str(mirror), "--cache", str(cache), str(cert), check=False)
    assert offline.returncode == 1 and "cessationOfOperation" in offline.stderr
    assert "CRL cache is stale" in offline.stderr and "working offline" in offline.stderr
