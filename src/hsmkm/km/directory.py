"""The directory: each user's current certificates, looked up by address."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.km import artifacts, users
from hsmkm.km.publisher import Deferred, Publisher
from hsmkm.store.database import Database
from hsmkm.store.repos.artifacts import ArtifactKind
from hsmkm.store.tx import Tx


@dataclass(frozen=True)
class CertRecord:
    serial: str
    kind: str
    status: str
    current: bool
    not_before: str
    not_after: str
    revoked_at: str | None
    reason: str | None
    der: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)


def user_certificates(tx: Tx, user_id: int) -> list[CertRecord]:
    return [
        CertRecord(
            r.serial, r.kind, r.status.value, r.current, r.not_before, r.not_after, r.revoked_at, r.reason, r.der
        )
        for r in tx.certs.of_user(user_id)
    ]


def current_certificate(tx: Tx, email: str, kind: CertKind) -> x509.Certificate:
    """The user's current certificate of this kind; a revoked one is not current."""
    user = users.find_user(tx, email)
    der = tx.certs.current_of_kind(user.id, kind.value)
    if der is None:
        raise errors.NotFound(f"{user.email} has no current {kind.value} certificate")
    return x509.load_der_x509_certificate(der)


# --- the directory's entries: derived from the database -----------------------------------------
#
# A change of a user's certificates (or of the CA certificate or a CRL) queues it in the
# outbox inside its own transaction; the publishers are given the entry, as the database holds
# it then, after the commit and the row dropped. A crash in between, or a directory that is
# down, leaves the row, and a later drain publishes it: the entries are never missing for
# long, never go backwards (a drain reads the current state, not the queued one) and never
# outlive a revocation in the files (revoking withdraws them before it commits).

_KINDS = {k.value: k for k in (CertKind.ENCRYPT, CertKind.SIGN)}
_CRL_OF = {a: k for k, a in artifacts.ARTIFACT_OF.items()}


@dataclass(frozen=True)
class Drained:
    """What a drain published, what it left queued, and why (a directory down)."""

    published: int
    pending: int
    error: str | None


def queue(tx: Tx, email: str, now: str) -> None:
    """Queue the user's directory entry for publishing (inside the caller's transaction)."""
    tx.outbox.queue(email, now)


def queue_artifact(tx: Tx, kind: ArtifactKind, now: str) -> None:
    """Queue the CA certificate's or a CRL's publication (inside the caller's transaction)."""
    tx.outbox.queue_artifact(kind, now)


def withdraw(publisher: Publisher, email: str) -> None:
    """Take the user's certificates out of the directory (a revocation, before it commits).

    The files go at once; a directory server that is down is left to the user's queued row."""
    with publisher.locked(), contextlib.suppress(errors.Unreachable):
        publisher.user(email, {})


def _entry(tx: Tx, email: str) -> dict[CertKind, bytes]:
    entry = tx.certs.directory_entry(email)
    return {_KINDS[k]: der for k, der in entry.items() if k in _KINDS}


def publish_user(db: Database, publisher: Publisher, email: str) -> None:
    """Give the publisher the user's entry as the database's current certificates make it."""
    with publisher.locked():
        with db.read() as tx:
            entry = _entry(tx, email)
        publisher.user(email, entry)


def publish_artifact(db: Database, publisher: Publisher, kind: ArtifactKind) -> None:
    """Give the publisher the database's current CA certificate or CRL of this kind."""
    current = artifacts.current(db, kind)
    if current is None:
        return
    if kind is ArtifactKind.CA_CERTIFICATE:
        publisher.ca_certificate(current.der)
    elif current.number is not None:
        publisher.crl(_CRL_OF[kind], current.number, current.der)


def drain_outbox(db: Database, publisher: Publisher, now: str | None = None) -> Drained:
    """Publish every queued entry; a row whose publication failed (a directory down) stays,
    and the failure is recorded for ``status``."""
    with db.read() as tx:
        queued = tx.outbox.queued()
        queued_artifacts = tx.outbox.queued_artifacts()
        failures = tx.outbox.failures() if queued or queued_artifacts else 0
    if not queued and not queued_artifacts:
        return Drained(0, 0, None)
    error: str | None = None
    done: list[tuple[str, str]] = []
    done_artifacts: list[tuple[ArtifactKind, str]] = []
    for kind, queued_at in queued_artifacts:
        try:
            publish_artifact(db, publisher, kind)
            done_artifacts.append((kind, queued_at))
        except Deferred:
            pass
        except errors.Unreachable as exc:
            error = error or str(exc)
    for email, queued_at in queued:
        try:
            publish_user(db, publisher, email)
        except errors.BadInput:  # an address no entry may be named after
            pass
        except Deferred:
            continue
        except errors.Unreachable as exc:
            error = error or str(exc)
            continue
        done.append((email, queued_at))
    with db.write() as tx:
        for email, queued_at in done:
            tx.outbox.done(email, queued_at)
        for kind, queued_at in done_artifacts:
            tx.outbox.artifact_done(kind, queued_at)
        if error is not None:
            tx.outbox.failed(error, now or datetime.now(UTC).isoformat())
        elif failures:
            tx.outbox.succeeded()
    pending = len(queued) + len(queued_artifacts) - len(done) - len(done_artifacts)
    return Drained(len(done) + len(done_artifacts), pending, error)


def sync_all(db: Database, publisher: Publisher) -> int:
    """Republish every user's entry, the CA certificate and the current CRLs from the database,
    and drop entries of no current certificate. ``errors.Unreachable`` when a directory is down
    (the files are rewritten all the same; run it again)."""
    with publisher.locked():
        with db.read() as tx:
            entries = [(email, _entry(tx, email)) for email in sorted(tx.users.emails())]
        publisher.user_entries(entries)
        publisher.prune([email for email, certs in entries if certs])
    artifacts.republish(db, publisher)
    with db.write() as tx:
        tx.outbox.clear()
        tx.outbox.succeeded()
    return len(entries)


def current_entry(db: Database, email: str) -> dict[CertKind, x509.Certificate]:
    """The user's current valid certificates by kind (empty for an unknown or revoked user)."""
    with db.read() as tx:
        entry = tx.certs.directory_entry(users.normalize_email(email))
    return {_KINDS[k]: x509.load_der_x509_certificate(der) for k, der in entry.items() if k in _KINDS}
