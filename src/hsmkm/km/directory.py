"""The directory: each user's current certificates, looked up by address."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from cryptography import x509

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.km import artifacts, users
from hsmkm.km.publisher import Publisher
from hsmkm.store.database import Database
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
# A change of a user's certificates queues the user in the directory outbox inside its own
# transaction; the publisher is given the entry after the commit and the queue row dropped. A
# crash in between leaves the row, and the next command drains it: the entries are never
# missing for long, and never outlive a revocation (revoking withdraws them before it commits).

_KINDS = {k.value: k for k in (CertKind.ENCRYPT, CertKind.SIGN)}


def queue(tx: Tx, email: str, now: str) -> None:
    """Queue the user's directory entry for publishing (inside the caller's transaction)."""
    tx.outbox.queue(email, now)


def withdraw(publisher: Publisher, email: str) -> None:
    """Take the user's certificates out of the directory (a revocation, before it commits)."""
    with publisher.locked():
        publisher.user(email, {})


def publish_user(db: Database, publisher: Publisher, email: str) -> None:
    """Give the publisher the user's entry as the database's current certificates make it."""
    with publisher.locked():
        with db.read() as tx:
            entry = tx.certs.directory_entry(email)
        publisher.user(email, {_KINDS[k]: der for k, der in entry.items() if k in _KINDS})


def drain_outbox(db: Database, publisher: Publisher) -> int:
    """Publish every queued user; returns how many."""
    with db.read() as tx:
        queued = tx.outbox.queued()
    for email, queued_at in queued:
        with contextlib.suppress(errors.BadInput):  # an address no entry may be named after
            publish_user(db, publisher, email)
        with db.write() as tx:
            tx.outbox.done(email, queued_at)
    return len(queued)


def sync_all(db: Database, publisher: Publisher) -> int:
    """Republish every user's entry, the CA certificate and the current CRLs from the database,
    and drop entries of no current certificate."""
    with db.read() as tx:
        everyone = sorted(tx.users.emails())
    emails = []
    for email in everyone:
        with contextlib.suppress(errors.BadInput):  # an address no entry may be named after
            publish_user(db, publisher, email)
            emails.append(email)
    publisher.prune(emails)
    with db.write() as tx:
        tx.outbox.clear()
    artifacts.republish(db, publisher)
    return len(emails)


def current_entry(db: Database, email: str) -> dict[CertKind, x509.Certificate]:
    """The user's current valid certificates by kind (empty for an unknown or revoked user)."""
    with db.read() as tx:
        entry = tx.certs.directory_entry(users.normalize_email(email))
    return {_KINDS[k]: x509.load_der_x509_certificate(der) for k, der in entry.items() if k in _KINDS}
