"""The client's sources: the revocation checker works from any ``CrlSource`` (here one serving
CRL bytes from memory, as an HTTPS or LDAP source will serve them from afar) and a KM home on
this machine is both a ``CrlSource`` and a ``CertDirectory``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsmkm import errors
from hsmkm.client.crlcache import CrlCache
from hsmkm.client.km_home import KmHome
from hsmkm.client.revocation import RevocationChecker, check_own_signing_certificate
from hsmkm.client.sources import CertDirectory, CrlSet, CrlSource
from hsmkm.clock import fixed_clock
from hsmkm.x509 import profiles
from hsmkm.x509.crl import RevocationReason, RevokedEntry, build_crl

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


class Served:
    """A source whose published CRLs the test changes, or takes offline."""

    def __init__(self) -> None:
        self.crls: CrlSet | None = None
        self.fetches = 0

    def fetch_crls(self) -> CrlSet:
        self.fetches += 1
        if self.crls is None:
            raise errors.Unreachable("the KM is offline")
        return self.crls


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = profiles.build_ca_certificate(
        x509.Name.from_rfc4514_string("CN=Sources CA"),
        key.public_key(),
        key,
        profiles.random_serial(),
        NOW - timedelta(days=1),
        NOW + timedelta(days=30),
    )
    return key, cert


def _crl(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    serials: list[int],
    number: int,
    at: datetime,
) -> bytes:
    key, cert = ca
    return build_crl(
        cert,
        key,
        [RevokedEntry(s, at, RevocationReason.KEY_COMPROMISE) for s in serials],
        number,
        at,
        at + timedelta(days=1),
    )


def test_a_stale_cache_is_refreshed_from_the_source_and_a_lost_source_answers_offline_with_a_warning(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], tmp_path: Path
) -> None:
    source, warnings = Served(), list[str]()
    clock = [NOW]
    checker = RevocationChecker(CrlCache(tmp_path / "c"), source, ca[1], warnings.append, lambda: clock[0])
    with pytest.raises(errors.Unreachable):  # empty cache, no source: nothing is known
        checker.status(5)
    source.crls = CrlSet(_crl(ca, [5], 1, NOW), None)
    info = checker.status(5)
    assert info is not None and info.reason is RevocationReason.KEY_COMPROMISE
    assert checker.status(6) is None and source.fetches == 2  # fresh: no second fetch
    clock[0] = NOW + timedelta(days=2)  # stale, and a newer CRL revokes 6
    source.crls = CrlSet(_crl(ca, [5, 6], 2, clock[0]), None)
    assert checker.status(6) is not None and source.fetches == 3
    clock[0] = NOW + timedelta(days=4)
    source.crls = None  # stale and offline: the cache answers, with a warning each time
    assert checker.status(6) is not None and checker.status(7) is None
    assert len(warnings) == 2 and all("working offline: the KM is offline" in w for w in warnings)


def test_a_forged_crl_from_the_source_is_refused_and_the_cache_kept(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], tmp_path: Path
) -> None:
    source = Served()
    source.crls = CrlSet(_crl(ca, [5], 1, NOW), None)
    checker = RevocationChecker(CrlCache(tmp_path / "c"), source, ca[1], lambda _w: None, fixed_clock(NOW))
    checker.refresh()
    other = ec.generate_private_key(ec.SECP256R1())
    source.crls = CrlSet(build_crl(ca[1], other, [], 9, NOW, NOW + timedelta(days=1)), None)
    with pytest.raises(errors.SignatureInvalid):
        checker.refresh()
    assert checker.status(5) is not None


def test_signing_is_refused_with_a_revoked_own_certificate(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], tmp_path: Path
) -> None:
    key, cert = ca
    own = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=me"))
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(77)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    source = Served()
    source.crls = CrlSet(_crl(ca, [77], 1, NOW), None)
    warnings: list[str] = []
    checker = RevocationChecker(CrlCache(tmp_path / "c"), source, cert, warnings.append, fixed_clock(NOW))
    with pytest.raises(errors.CertificateRevoked, match="not signing"):
        check_own_signing_certificate(own, checker, None, warnings.append, fixed_clock(NOW))
    check_own_signing_certificate(own, None, None, warnings.append)  # nothing known: a warning only
    assert warnings == ["revocation of your signing certificate not checked: the keystore holds no CA certificate"]


def test_a_km_home_is_a_crl_source_and_a_directory(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], tmp_path: Path
) -> None:
    home = KmHome(tmp_path / "km")
    source: CrlSource = home
    directory: CertDirectory = home
    with pytest.raises(errors.NotFound, match="no KM CA certificate"):
        home.ca_certificate()
    with pytest.raises(errors.Unreachable, match="no CRL published"):
        source.fetch_crls()
    (tmp_path / "km" / "pub" / "crl").mkdir(parents=True)
    (tmp_path / "km" / "pub" / "certs").mkdir()
    (tmp_path / "km" / "pub" / "ca.crt").write_bytes(ca[1].public_bytes(serialization.Encoding.DER))
    full = _crl(ca, [1], 3, NOW)
    (tmp_path / "km" / "pub" / "crl" / "full.crl").write_bytes(full)
    assert home.ca_certificate() == ca[1]
    assert source.fetch_crls() == CrlSet(full, None)
    with pytest.raises(errors.NotFound, match=re.escape("no encryption certificate for bob@example.com")):
        directory.encryption_certificate("bob@example.com")
    (tmp_path / "km" / "pub" / "certs" / "bob@example.com.enc.crt").write_bytes(
        ca[1].public_bytes(serialization.Encoding.DER)
    )
    assert directory.encryption_certificate("bob@example.com") == ca[1]
    (tmp_path / "km" / "pub" / "certs" / "eve@example.com.enc.crt").write_bytes(b"\x30\x03\x02\x01")
    with pytest.raises(errors.MalformedInput, match="damaged certificate"):
        directory.encryption_certificate("eve@example.com")
    with pytest.raises(errors.BadInput):
        directory.encryption_certificate("../../etc/passwd")


def test_the_client_reaches_the_km_only_through_its_protocols() -> None:
    """No module of client/ imports the KM's code, the store or the command line: a KM is
    reached through a Transport, a CrlSource and a CertDirectory only."""
    import ast

    folder = Path(__file__).resolve().parents[1] / "src" / "hsmkm" / "client"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = ".".join(name.split(".")[:2])
                assert top not in ("hsmkm.km", "hsmkm.store", "hsmkm.cli"), f"{path.name} imports {name}"
