"""The .epf keystore (PKCS#12 with several keys): openssl and cryptography interoperate both ways."""

from __future__ import annotations

import hmac
import os
import subprocess
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.keys import p12
from hsmkm.keys.algorithms import KeyAlgorithm, algorithm_of
from hsmkm.keys.base import KeyRole, PrivateKey
from hsmkm.keys.epf import EpfKeystore
from hsmkm.x509 import profiles

PW = "correct horse battery"
FAST = 1000  # iterations for speed; one test below uses the default
NOW = datetime.now(UTC)
URLS = profiles.PublicationUrls("http://pki.example/hsmkm/")


class Pki:
    """A CA and alice's keys: a signing key and three encryption keys of different ages."""

    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = profiles.build_ca_certificate(
            x509.Name.from_rfc4514_string("CN=hsmkm CA,O=Example"),
            self.ca_key.public_key(),
            self.ca_key,
            profiles.random_serial(),
            NOW - timedelta(days=1000),
            NOW + timedelta(days=3650),
        )
        self.sign_key = ec.generate_private_key(ec.SECP256R1())
        self.sign_cert = self.issue(CertKind.SIGN, self.sign_key, 0)
        self.enc: list[tuple[PrivateKey, x509.Certificate]] = []
        for age, key in (
            (0, rsa.generate_private_key(65537, 2048)),
            (400, ec.generate_private_key(ec.SECP384R1())),
            (800, rsa.generate_private_key(65537, 2048)),
        ):
            self.enc.append((key, self.issue(CertKind.ENCRYPT, key, age)))

    def issue(self, kind: CertKind, key: PrivateKey, age_days: int) -> x509.Certificate:
        start = NOW - timedelta(days=age_days)
        return profiles.build_user_certificate(
            kind,
            "alice@example.com",
            "Alice",
            key.public_key(),
            self.ca,
            self.ca_key,
            profiles.random_serial(),
            start,
            start + timedelta(days=365),
            URLS,
        )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _store(pki: Pki, path: Path, iterations: int = FAST, password: str = PW) -> EpfKeystore:
    ks = EpfKeystore.create(path, password, iterations=iterations)
    # historical key first, to show the order comes from the certificates, not from insertion
    ks.commit((pki.sign_key, pki.sign_cert), [pki.enc[2], pki.enc[0], pki.enc[1]], [pki.ca])
    return ks


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _openssl(*args: str, password: str = PW) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, env={**os.environ, "P": password})


def _pem_key(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _pem_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _same_key(a: PrivateKey, b: PrivateKey) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_key().public_bytes(serialization.Encoding.DER, pub) == b.public_key().public_bytes(
        serialization.Encoding.DER, pub
    )


# --- round trip and the Keystore interface -----------------------------------------------------


def test_round_trip_orders_entries_by_certificate_age(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "alice.epf"
    _store(pki, path)
    assert path.stat().st_mode & 0o777 == 0o600
    ks = EpfKeystore.open(path, PW, iterations=FAST)
    signing = ks.signing_entry()
    assert signing is not None and signing.role is KeyRole.SIGN
    assert signing.certificate == pki.sign_cert and _same_key(signing.key, pki.sign_key)
    entries = ks.encryption_entries()
    assert [e.certificate for e in entries] == [c for _, c in pki.enc]
    assert all(_same_key(e.key, k) and e.role is KeyRole.ENCRYPT for e, (k, _) in zip(entries, pki.enc, strict=True))
    assert ks.ca_certificates() == [pki.ca]
    info = ks.info()
    assert info.signing and f"{pki.sign_cert.serial_number:x}" in info.signing
    assert len(info.encryption) == 3 and info.ca == ["CN=hsmkm CA,O=Example"] and info.unpaired_keys == 0
    text = repr(asdict(info))
    assert PW not in text and "PRIVATE" not in text


@pytest.mark.interop
def test_friendly_names_and_equal_not_before(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    ks = EpfKeystore.create(path, PW, iterations=FAST)
    first = pki.issue(CertKind.ENCRYPT, pki.enc[0][0], 10)
    ks.add_encryption_entry(pki.enc[0][0], first)
    newer_key = ec.generate_private_key(ec.SECP256R1())
    twin = pki.issue(CertKind.ENCRYPT, newer_key, 10)  # same notBefore: the later one added wins
    ks.add_encryption_entry(newer_key, twin)
    ks.add_ca_certificate(pki.ca)
    ks.save()
    reopened = EpfKeystore.open(path, PW, iterations=FAST)
    assert [e.certificate for e in reopened.encryption_entries()] == [twin, first]
    out = _openssl("pkcs12", "-in", str(path), "-passin", "env:P", "-nokeys")
    assert "friendlyName: alice@example.com enc " in out.stdout and "friendlyName: hsmkm CA" in out.stdout


def test_adding_checks_key_and_role(pki: Pki, tmp_path: Path) -> None:
    ks = EpfKeystore.create(tmp_path / "a.epf", PW, iterations=FAST)
    with pytest.raises(errors.BadInput, match="does not belong"):
        ks.add_encryption_entry(pki.enc[1][0], pki.enc[0][1])
    with pytest.raises(errors.BadInput):
        ks.set_signing_entry(pki.enc[0][0], pki.enc[0][1])
    with pytest.raises(errors.BadInput):
        ks.add_encryption_entry(pki.sign_key, pki.sign_cert)
    with pytest.raises(errors.BadInput):
        ks.add_ca_certificate(pki.sign_cert)
    assert not (tmp_path / "a.epf").exists()


def test_generated_signing_key_is_stored_only_with_its_certificate(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "new.epf"
    ks = EpfKeystore.create(path, PW, iterations=FAST)
    key = ks.generate_signing_key(KeyAlgorithm.P384)
    assert algorithm_of(key) is KeyAlgorithm.P384 and ks.info().pending and not path.exists()
    cert = pki.issue(CertKind.SIGN, key, 0)  # stands in for the KM answering the CSR
    ks.set_signing_entry(key, cert)
    ks.add_ca_certificate(pki.ca)
    assert not ks.info().pending
    ks.save()
    entry = EpfKeystore.open(path, PW).signing_entry()
    assert entry is not None and _same_key(entry.key, key)
    other = ks.generate_signing_key(KeyAlgorithm.P256)
    ks.discard_key(other)
    assert not ks.info().pending


def test_create_refuses_existing_paths_and_short_passwords(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    path.write_bytes(b"precious")
    with pytest.raises(errors.AlreadyExists):
        EpfKeystore.create(path, PW)
    with pytest.raises(errors.BadInput):
        EpfKeystore.create(tmp_path / "b.epf", "short")
    late = EpfKeystore.create(tmp_path / "c.epf", PW, iterations=FAST)
    late.add_ca_certificate(pki.ca)
    (tmp_path / "c.epf").write_bytes(b"someone else's")  # created between create() and save()
    with pytest.raises(errors.AlreadyExists):
        late.save()
    assert (tmp_path / "c.epf").read_bytes() == b"someone else's" and path.read_bytes() == b"precious"
    with pytest.raises(errors.NotFound):
        EpfKeystore.open(tmp_path / "missing.epf", PW)


# --- openssl and cryptography ------------------------------------------------------------------


@pytest.mark.interop
def test_openssl_reads_every_key_and_certificate(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "alice.epf"
    _store(pki, path)
    info = _openssl("pkcs12", "-in", str(path), "-info", "-passin", "env:P", "-noout")
    assert info.returncode == 0, info.stderr
    assert f"MAC: sha256, Iteration {FAST}" in info.stderr
    assert "PBES2, PBKDF2, AES-256-CBC" in info.stderr and "hmacWithSHA256" in info.stderr
    dump = _openssl("pkcs12", "-in", str(path), "-passin", "env:P", "-nodes")
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.count("-----BEGIN PRIVATE KEY-----") == 4
    assert dump.stdout.count("-----BEGIN CERTIFICATE-----") == 5
    assert "friendlyName: alice@example.com sign" in dump.stdout
    wrong = _openssl("pkcs12", "-in", str(path), "-passin", "pass:not the password", "-noout")
    assert wrong.returncode != 0 and "mac verify error" in wrong.stderr.lower()


@pytest.mark.interop
def test_opens_what_openssl_exports(pki: Pki, tmp_path: Path) -> None:
    key, cert = pki.enc[0]
    key_pem, cert_pem, ca_pem = (
        _pem_key(key, tmp_path / "k.pem"),
        _pem_cert(cert, tmp_path / "c.pem"),
        _pem_cert(pki.ca, tmp_path / "ca.pem"),
    )
    variants = {
        "default": [],
        "legacy": ["-legacy"],
        "sha1-mac": ["-macalg", "sha1"],
        "sha512-mac": ["-macalg", "sha512"],
        "plain-certs": ["-certpbe", "NONE"],
        "low-iter": ["-iter", "1", "-maciter"],
    }
    for name, extra in variants.items():
        out = tmp_path / f"{name}.p12"
        made = _openssl(
            "pkcs12",
            "-export",
            "-inkey",
            str(key_pem),
            "-in",
            str(cert_pem),
            "-certfile",
            str(ca_pem),
            "-name",
            "bob enc",
            "-passout",
            "env:P",
            "-out",
            str(out),
            *extra,
        )
        assert made.returncode == 0, made.stderr
        ks = EpfKeystore.open(out, PW)
        entries = ks.encryption_entries()
        assert [e.certificate for e in entries] == [cert] and _same_key(entries[0].key, key), name
        assert ks.ca_certificates() == [pki.ca], name
        with pytest.raises(errors.WrongPassword):
            EpfKeystore.open(out, "not the password")
        # saving upgrades a weak file to the current format, and openssl still reads it
        ks.iterations = FAST
        ks.save()
        again = EpfKeystore.open(out, PW)
        assert [e.certificate for e in again.encryption_entries()] == [cert]
        assert "MAC: sha256" in _openssl("pkcs12", "-in", str(out), "-info", "-passin", "env:P", "-noout").stderr


def test_opens_what_cryptography_writes_and_keeps_unpaired_keys(pki: Pki, tmp_path: Path) -> None:
    key, cert = pki.enc[1]
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(FAST)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(PW.encode())
    )
    path = tmp_path / "c.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"alice enc", key, cert, [pki.ca], enc))
    ks = EpfKeystore.open(path, PW, iterations=FAST)
    assert [e.certificate for e in ks.encryption_entries()] == [cert] and ks.ca_certificates() == [pki.ca]
    # a key without its certificate is kept, not silently dropped on the next save
    lone = tmp_path / "lone.p12"
    lone.write_bytes(pkcs12.serialize_key_and_certificates(b"lonely", key, None, None, enc))
    ks = EpfKeystore.open(lone, PW, iterations=FAST)
    assert ks.info().unpaired_keys == 1 and ks.encryption_entries() == []
    ks.add_ca_certificate(pki.ca)
    ks.save()
    assert EpfKeystore.open(lone, PW, iterations=FAST).info().unpaired_keys == 1
    loaded = pkcs12.load_pkcs12(lone.read_bytes(), PW.encode())
    assert loaded.key is not None and _same_key(loaded.key, key)  # type: ignore[arg-type]


def test_cryptography_reads_what_we_write(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    _store(pki, path)
    loaded = pkcs12.load_pkcs12(path.read_bytes(), PW.encode())
    assert loaded.key is not None and loaded.cert is not None
    assert {c.certificate for c in loaded.additional_certs} | {loaded.cert.certificate} == {
        pki.sign_cert,
        pki.ca,
        *(c for _, c in pki.enc),
    }


passwords = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=8, max_size=24)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_kdf_and_mac_agree_with_cryptography(pki: Pki, tmp_path: Path, password: str) -> None:
    """cryptography's own RFC 7292 KDF computes the MAC key; our loader must verify it, and vice versa."""
    key, cert = pki.enc[0]
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(3)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )
    path = tmp_path / "h.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"x", key, cert, None, enc))
    assert [e.certificate for e in EpfKeystore.open(path, password).encryption_entries()] == [cert]
    path.unlink()
    ours = EpfKeystore.create(path, password, iterations=3)
    ours.add_encryption_entry(key, cert)
    ours.save()
    loaded = pkcs12.load_pkcs12(path.read_bytes(), password.encode())
    assert loaded.cert is not None and loaded.cert.certificate == cert


@pytest.mark.interop
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_openssl_verifies_our_mac_for_any_password(pki: Pki, tmp_path: Path, password: str) -> None:
    path = tmp_path / "o.epf"
    path.unlink(missing_ok=True)
    ks = EpfKeystore.create(path, password, iterations=7)
    ks.add_ca_certificate(pki.ca)
    ks.save()
    out = _openssl("pkcs12", "-in", str(path), "-passin", "env:P", "-noout", password=password)
    assert out.returncode == 0, out.stderr


def test_kdf_is_deterministic_and_separates_purposes() -> None:
    a = p12._pkcs12_kdf("pw", b"salt", 5, 3, 32)
    assert a == p12._pkcs12_kdf("pw", b"salt", 5, 3, 32) and len(a) == 32
    assert a != p12._pkcs12_kdf("pw", b"salt", 5, 1, 32) != p12._pkcs12_kdf("pw", b"salt", 6, 3, 32)
    assert p12._pkcs12_kdf("pw", b"salt", 5, 3, 80)[:32] == a  # longer output extends, it does not change
    assert len(p12._pkcs12_kdf("pw", b"salt", 1, 3, 64, "sha512")) == 64


# --- wrong passwords, damage, crashes ------------------------------------------------------------


def test_wrong_password_changes_nothing(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    _store(pki, path)
    before = path.read_bytes()
    with pytest.raises(errors.WrongPassword) as exc:
        EpfKeystore.open(path, PW + "x")
    assert "wrong password or corrupted file" in str(exc.value) and PW not in str(exc.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.epf"]


def test_tampering_is_caught(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    _store(pki, path)
    good = path.read_bytes()
    for offset in (40, len(good) // 2, len(good) - 40):
        bad = bytearray(good)
        bad[offset] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises((errors.WrongPassword, errors.MalformedInput)):
            EpfKeystore.open(path, PW)
    for junk in (b"", b"hello", good[:100], good + b"\x00"):
        path.write_bytes(junk)
        with pytest.raises(errors.MalformedInput):
            EpfKeystore.open(path, PW)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_a_one_line_bad_input(pki: Pki, tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "fuzz.epf"
    if not path.exists():
        ks = EpfKeystore.create(path, PW, iterations=2)
        ks.commit((pki.sign_key, pki.sign_cert), [pki.enc[0]], [pki.ca])
    good = path.read_bytes()
    offset = data.draw(st.integers(0, len(good) - 1))
    cut = data.draw(st.integers(offset, len(good)))
    bad = good[:offset] + data.draw(st.binary(max_size=8)) + good[cut:]
    victim = tmp_path / "victim.epf"
    victim.write_bytes(bad)
    try:
        EpfKeystore.open(victim, PW)
    except errors.HsmkmError as exc:
        assert isinstance(exc, errors.BadInput) and "\n" not in str(exc)


def test_a_valid_mac_over_damaged_contents_is_malformed(pki: Pki, tmp_path: Path) -> None:
    """Damage the MAC cannot see (a writer's bug): still one clear error, never a traceback."""
    path = tmp_path / "m.epf"
    for auth_safe in (b"\x30\x03\x02\x01\x01", b"\x30\x00" + b"junk", b"\x04\x02hi"):
        salt = b"s" * 8
        mac = hmac.new(p12._pkcs12_kdf(PW, salt, 1, 3, 32), auth_safe, "sha256").digest()
        pfx = asn1_pkcs12.Pfx(
            {
                "version": "v3",
                "auth_safe": {"content_type": "data", "content": auth_safe},
                "mac_data": {
                    "mac": {"digest_algorithm": {"algorithm": "sha256"}, "digest": mac},
                    "mac_salt": salt,
                    "iterations": 1,
                },
            }
        )
        path.write_bytes(pfx.dump())
        with pytest.raises(errors.MalformedInput):
            EpfKeystore.open(path, PW)


def test_absurd_iteration_counts_are_refused_fast(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    _store(pki, path)
    pfx = asn1_pkcs12.Pfx.load(path.read_bytes())
    mac_data = pfx["mac_data"].copy()
    mac_data["iterations"] = 2**31 - 1
    pfx["mac_data"] = mac_data
    path.write_bytes(pfx.dump(force=True))
    start = time.monotonic()
    with pytest.raises(errors.MalformedInput, match="iteration"):
        EpfKeystore.open(path, PW)
    assert time.monotonic() - start < 1


def test_a_crash_mid_write_leaves_the_old_file(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.epf"
    ks = _store(pki, path)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    ks.add_encryption_entry(*pki.enc[0])  # already present: nothing new, but the file is rewritten
    with pytest.raises(OSError):
        ks.save()
    with pytest.raises(OSError):
        ks.change_password("a brand new password")
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.epf"]
    assert EpfKeystore.open(path, PW, iterations=FAST).signing_entry() is not None
    ks.save()  # the in-memory store still has the old password
    assert EpfKeystore.open(path, PW).signing_entry() is not None


@pytest.mark.interop
def test_change_password(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "a.epf"
    _store(pki, path)
    ks = EpfKeystore.open(path, PW, iterations=FAST)
    with pytest.raises(errors.BadInput):
        ks.change_password("short")
    ks.change_password("a brand new password")
    with pytest.raises(errors.WrongPassword):
        EpfKeystore.open(path, PW)
    again = EpfKeystore.open(path, "a brand new password")
    assert len(again.encryption_entries()) == 3
    assert (
        _openssl("pkcs12", "-in", str(path), "-passin", "env:P", "-noout", password="a brand new password").returncode
        == 0
    )


@pytest.mark.interop
def test_default_iteration_count(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "slow.epf"
    start = time.monotonic()
    _store(pki, path, iterations=p12.OWASP_PBKDF2_SHA256_ITERATIONS)
    ks = EpfKeystore.open(path, PW)
    elapsed = time.monotonic() - start
    assert ks.iterations == 600_000 and len(ks.encryption_entries()) == 3
    info = _openssl("pkcs12", "-in", str(path), "-info", "-passin", "env:P", "-noout")
    assert "MAC: sha256, Iteration 600000" in info.stderr and "iteration 600000" in info.stderr.lower()
    assert elapsed < 10
    # a weaker file is raised to the default when saved
    weak = tmp_path / "weak.epf"
    _store(pki, weak, iterations=FAST)
    assert EpfKeystore.open(weak, PW).iterations == 600_000


def test_key_algorithms() -> None:
    for alg in KeyAlgorithm:
        key = alg.generate()
        assert algorithm_of(key) is alg and algorithm_of(key.public_key()) is alg
        if alg.is_rsa:
            with pytest.raises(ValueError):
                _ = alg.curve
        else:
            assert alg.curve_name == key.curve.name  # type: ignore[union-attr]
    with pytest.raises(errors.UnsupportedAlgorithm):
        algorithm_of(rsa.generate_private_key(65537, 1024))
    with pytest.raises(errors.UnsupportedAlgorithm):
        algorithm_of(ec.generate_private_key(ec.SECP521R1()))


def test_a_new_epf_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "race.epf"
    store = EpfKeystore.create(path, "password-123", iterations=1000)
    path.write_bytes(b"someone else's file")
    with pytest.raises(errors.AlreadyExists):
        store.save()
    assert path.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["race.epf"]
