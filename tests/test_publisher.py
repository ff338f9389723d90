"""Publication: the KM hands certificates, the CA certificate and CRLs to the publisher it is
given (the CLI gives the home's file publisher), driven from the database after each commit."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import copy_km, downgrade_database, hsmkm, trial_pin
from hsmkm.certnames import CertKind
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.km.publisher import CrlKind, Publisher
from hsmkm.km.publishers import publisher_for
from hsmkm.store.repos.artifacts import Artifact, ArtifactKind
from hsmkm.x509.crlparse import parse_crl


class MemoryPublisher:
    """A second destination, kept in memory: what the KM gave it, in order."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.ca: bytes | None = None
        self.crls: dict[CrlKind, tuple[int, bytes]] = {}
        self.users: dict[str, dict[CertKind, bytes]] = {}
        self.events: list[tuple[str, str]] = []
        self.holding = False

    def prepare(self) -> None:
        self.events.append(("prepare", ""))

    def ca_certificate(self, der: bytes) -> None:
        self.ca = der

    def crl_location(self, kind: CrlKind) -> str:
        return f"memory:{kind.value}"

    def crl(self, kind: CrlKind, number: int, der: bytes) -> bool:
        if kind in self.crls and self.crls[kind][0] >= number:
            return False
        self.crls[kind] = (number, der)
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    def user(self, email: str, certs: Mapping[CertKind, bytes]) -> None:
        assert self.holding, "a user entry is written only under the publisher's lock"
        # What another process sees at this moment: committed or not yet.
        with sqlite3.connect(self.database) as conn:
            statuses = sorted(
                str(r[0])
                for r in conn.execute(
                    "SELECT c.status FROM certificates c JOIN users u ON u.id = c.user_id WHERE u.email = ? "
                    "AND c.current = 1",
                    (email,),
                )
            )
        self.events.append(("user" if certs else "withdraw", ",".join(statuses)))
        if certs:
            self.users[email] = dict(certs)
        else:
            self.users.pop(email, None)

    def user_entries(self, entries: Iterable[tuple[str, Mapping[CertKind, bytes]]]) -> int:
        listed = list(entries)
        for email, certs in listed:
            self.user(email, certs)
        return len(listed)

    def prune(self, keep: Collection[str]) -> None:
        for email in list(self.users):
            if email not in keep:
                del self.users[email]


def _open(home: Path, publisher: Publisher):  # type: ignore[no-untyped-def]
    from hsmkm.km.manager import KeyManager

    return KeyManager.open(home, trial_pin(home, "km"), actor="test", publisher=publisher)


def _request(email: str, code: str):  # type: ignore[no-untyped-def]
    from hsmkm.client.enroll import build_csr
    from hsmkm.protocol import EnrollRequest

    return EnrollRequest(email=email, code=code, csr_der=build_csr(ec.generate_private_key(ec.SECP256R1()), email))


def _current(home: Path, email: str) -> dict[str, bytes]:
    with sqlite3.connect(home / "km.db") as conn:
        return {
            str(k): bytes(d)
            for k, d in conn.execute(
                "SELECT c.kind, c.der FROM certificates c JOIN users u ON u.id = c.user_id WHERE u.email = ? "
                "AND c.current = 1 AND c.status = 'valid'",
                (email,),
            )
        }


@pytest.fixture(scope="module")
def home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new KM, made once per module and never used itself (each test gets a copy, ``home``)."""
    h = tmp_path_factory.mktemp("template") / "km"
    hsmkm("init", "--ca-subject", "CN=Publisher CA", "--ca-key", "p256", home=h)
    return h


@pytest.fixture
def home(home_template: Path, tmp_path: Path) -> Path:
    """A new KM of the test's own, a copy of the template (``copy_km``)."""
    return copy_km(home_template.parent, tmp_path, home_template.name)


def test_the_cli_publishes_to_the_homes_files(home: Path) -> None:
    from hsmkm.km.publishers.files import FilePublisher

    publisher = publisher_for(home)
    assert isinstance(publisher, FilePublisher) and publisher.home.root == home
    assert (home / "pub" / "crl").is_dir() and (home / "pub" / "certs").is_dir()
    x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes())


def test_the_km_publishes_through_the_publisher_it_is_given(home: Path) -> None:
    from hsmkm.km import directory
    from hsmkm.km.enroll import enroll
    from hsmkm.km.publication import publish_crl
    from hsmkm.km.revocation import revoke_user
    from hsmkm.x509.crl import RevocationReason

    code = str(hsmkm("user", "add", "pam@example.com", "--json", home=home).json()["code"])
    files_before = sorted(p.name for p in (home / "pub").rglob("*") if p.is_file())
    memory = MemoryPublisher(home / "km.db")
    km = _open(home, memory)
    try:
        enroll(km, _request("pam@example.com", code))
        current = _current(home, "pam@example.com")
        assert {k.value: v for k, v in memory.users["pam@example.com"].items()} == current
        assert set(current) == {"encrypt", "sign"}

        full = publish_crl(km, CrlKind.FULL)
        assert full.where == "memory:full" and full.installed
        assert parse_crl(memory.crls[CrlKind.FULL][1]).number == full.number == memory.crls[CrlKind.FULL][0]

        memory.events.clear()
        revoke_user(km, "pam@example.com", RevocationReason.KEY_COMPROMISE)
        # Withdrawn while the revocation was not yet committed (another reader still saw it valid).
        assert ("withdraw", "valid,valid") in memory.events
        assert "pam@example.com" not in memory.users
        delta = publish_crl(km, CrlKind.DELTA)
        revoked = x509.load_der_x509_crl(memory.crls[CrlKind.DELTA][1])
        assert delta.base == full.number and len(revoked) == delta.entries == 2

        # A queued entry left by a crash after a commit: the next drain gives it again.
        memory.users["ghost@example.com"] = {}
        with km.db.write() as tx:
            directory.queue(tx, "pam@example.com", "later")
        assert directory.drain_outbox(km.db, memory).published == 1
        assert directory.sync_all(km.db, memory) == 1 and "ghost@example.com" not in memory.users
    finally:
        km.close()
    # Nothing went to the home's files: the KM wrote only through the publisher.
    assert sorted(p.name for p in (home / "pub").rglob("*") if p.is_file()) == files_before


def test_a_ceremony_gives_its_ca_certificate_to_the_publisher(tmp_path: Path) -> None:
    from hsmkm.km.ceremony import InitRequest, run_ceremony

    root = tmp_path / "km"
    memory = MemoryPublisher(root / "km.db")
    run_ceremony(
        InitRequest(
            root=root,
            ca_subject=x509.Name.from_rfc4514_string("CN=Memory CA"),
            ca_key_alg=KeyAlgorithm.P256,
            embedded_officers=2,
        ),
        memory,
    )
    assert memory.ca is not None and ("prepare", "") in memory.events
    ca = x509.load_der_x509_certificate(memory.ca)
    assert ca.subject.rfc4514_string() == "CN=Memory CA"
    assert not (root / "pub" / "ca.crt").exists()


# --- published artifacts in the database ----------------------------------------------------------


def _artifact(home: Path, kind: ArtifactKind) -> Artifact | None:
    from hsmkm.store.database import Database

    db = Database.open(home / "km.db")
    try:
        with db.read() as tx:
            return tx.artifacts.current(kind)
    finally:
        db.close()


def _etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def test_the_published_bytes_are_in_the_database_as_in_the_files(home: Path) -> None:
    pub = home / "pub"
    ca = _artifact(home, ArtifactKind.CA_CERTIFICATE)
    assert ca is not None and ca.der == (pub / "ca.crt").read_bytes() and ca.etag == _etag_of(ca.der)
    assert _artifact(home, ArtifactKind.FULL_CRL) is None  # nothing published yet

    first = hsmkm("crl", "publish", "--json", home=home).json()
    full = _artifact(home, ArtifactKind.FULL_CRL)
    assert full is not None and full.der == (pub / "crl" / "full.crl").read_bytes()
    assert full.number == first["number"] == parse_crl(full.der).number
    assert full.next_update == first["next_update"] and full.modified_at == first["this_update"]
    assert full.etag == _etag_of(full.der)

    code = str(hsmkm("user", "add", "quin@example.com", "--json", home=home).json()["code"])
    km = _open(home, publisher_for(home))
    try:
        from hsmkm.km.enroll import enroll
        from hsmkm.km.revocation import revoke_user
        from hsmkm.x509.crl import RevocationReason

        enroll(km, _request("quin@example.com", code))
        revoke_user(km, "quin@example.com", RevocationReason.SUPERSEDED)
    finally:
        km.close()
    hsmkm("crl", "publish", "--delta", home=home)
    delta = _artifact(home, ArtifactKind.DELTA_CRL)
    assert delta is not None and delta.der == (pub / "crl" / "delta.crl").read_bytes()
    assert parse_crl(delta.der).delta_of == full.number and len(x509.load_der_x509_crl(delta.der)) == 2

    # Run again: the database and the files move together, and the tag follows the content.
    again = hsmkm("crl", "publish", "--json", home=home).json()
    newer = _artifact(home, ArtifactKind.FULL_CRL)
    assert newer is not None and newer.der == (pub / "crl" / "full.crl").read_bytes()
    assert newer.number == again["number"] > full.number and newer.etag != full.etag
    assert newer.etag == _etag_of(newer.der)
    assert _artifact(home, ArtifactKind.CA_CERTIFICATE) == ca  # untouched: same bytes, same tag


def test_an_older_crl_never_replaces_a_newer_one_in_the_database(home: Path) -> None:
    from hsmkm.store.database import Database

    hsmkm("crl", "publish", home=home)
    older = (home / "pub" / "crl" / "full.crl").read_bytes()
    hsmkm("crl", "publish", home=home)
    current = _artifact(home, ArtifactKind.FULL_CRL)
    assert current is not None and current.der != older
    db = Database.open(home / "km.db")
    try:
        with db.write() as tx:
            assert (
                tx.artifacts.put(
                    ArtifactKind.FULL_CRL, older, "2000-01-01T00:00:00+00:00", parse_crl(older).number, None
                )
                is False
            )
    finally:
        db.close()
    assert _artifact(home, ArtifactKind.FULL_CRL) == current


def test_a_full_sync_rewrites_the_files_from_the_database(home: Path) -> None:
    hsmkm("crl", "publish", home=home)
    hsmkm("crl", "publish", "--delta", home=home)
    pub = home / "pub"
    before = {p: p.read_bytes() for p in (pub / "ca.crt", pub / "crl" / "full.crl", pub / "crl" / "delta.crl")}
    for path in before:
        path.unlink()  # lost (a restore of the database without the files)
    hsmkm("directory", "sync", "--full", home=home)
    assert {p: p.read_bytes() for p in before} == before
    hsmkm("directory", "sync", "--full", home=home)  # again: nothing changes
    assert {p: p.read_bytes() for p in before} == before
    for kind, path in (
        (ArtifactKind.CA_CERTIFICATE, pub / "ca.crt"),
        (ArtifactKind.FULL_CRL, pub / "crl" / "full.crl"),
        (ArtifactKind.DELTA_CRL, pub / "crl" / "delta.crl"),
    ):
        art = _artifact(home, kind)
        assert art is not None and art.der == before[path]


def test_a_database_of_the_previous_revision_is_upgraded_with_its_ca_certificate(home: Path) -> None:
    downgrade_database(home / "km.db", "0003_counters")  # as the revision before this one left it
    with sqlite3.connect(home / "km.db") as conn:
        assert "published_artifacts" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    refused = hsmkm("crl", "publish", home=home, check=False)
    assert refused.returncode != 0 and "hsmkm db upgrade" in refused.stderr
    hsmkm("db", "upgrade", home=home)
    ca = _artifact(home, ArtifactKind.CA_CERTIFICATE)
    assert ca is not None and ca.der == (home / "pub" / "ca.crt").read_bytes()
    hsmkm("crl", "publish", home=home)
    full = _artifact(home, ArtifactKind.FULL_CRL)
    assert full is not None and full.der == (home / "pub" / "crl" / "full.crl").read_bytes()
