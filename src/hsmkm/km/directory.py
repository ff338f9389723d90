"""The directory: each user's current certificates, looked up by address."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass

from cryptography import x509

from hsmkm import errors
from hsmkm.km import users
from hsmkm.km.publisher import Publisher
from hsmkm.x509.profiles import CertKind


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


def user_certificates(conn: sqlite3.Connection, user_id: int) -> list[CertRecord]:
    return [
        CertRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], bytes(r[8]))
        for r in conn.execute(
            "SELECT serial, kind, status, current, not_before, not_after, revoked_at, reason, der "
            "FROM certificates WHERE user_id = ? ORDER BY issued_at, serial",
            (user_id,),
        )
    ]


def current_certificate(conn: sqlite3.Connection, email: str, kind: CertKind) -> x509.Certificate:
    """The user's current certificate of this kind; a revoked one is not current."""
    found = conn.execute("SELECT id, email FROM users WHERE email = ?", (users.normalize_email(email),)).fetchone()
    if found is None:
        raise errors.NotFound(f"unknown user {email}")
    user = users.User(found[0], found[1], None, users.UserStatus.ACTIVE, "")  # id and email only
    row = conn.execute(
        "SELECT der FROM certificates WHERE user_id = ? AND kind = ? AND current = 1 AND status = 'valid' "
        "ORDER BY issued_at DESC LIMIT 1",
        (user.id, kind.value),
    ).fetchone()
    if row is None:
        raise errors.NotFound(f"{user.email} has no current {kind.value} certificate")
    return x509.load_der_x509_certificate(bytes(row[0]))


# --- the directory's entries: derived from the database -----------------------------------------
#
# A change of a user's certificates queues the user in ``directory_outbox`` inside its own
# transaction; the publisher is given the entry after the commit and the queue row dropped. A
# crash in between leaves the row, and the next command drains it: the entries are never
# missing for long, and never outlive a revocation (revoking withdraws them before it commits).


def queue(conn: sqlite3.Connection, email: str, now: str) -> None:
    """Queue the user's directory entry for publishing (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO directory_outbox(email, queued_at) VALUES (?, ?) "
        "ON CONFLICT(email) DO UPDATE SET queued_at = excluded.queued_at",
        (email, now),
    )


def withdraw(publisher: Publisher, email: str) -> None:
    """Take the user's certificates out of the directory (a revocation, before it commits)."""
    with publisher.locked():
        publisher.user(email, {})


def publish_user(conn: sqlite3.Connection, publisher: Publisher, email: str) -> None:
    """Give the publisher the user's entry as the database's current certificates make it."""
    with publisher.locked():
        rows = conn.execute(
            "SELECT c.kind, c.der FROM certificates c JOIN users u ON u.id = c.user_id WHERE u.email = ? "
            "AND c.current = 1 AND c.status = 'valid' ORDER BY c.issued_at",
            (email,),
        ).fetchall()
        kinds = {k.value: k for k in (CertKind.ENCRYPT, CertKind.SIGN)}
        publisher.user(email, {kinds[kind]: bytes(der) for kind, der in rows if kind in kinds})


def drain_outbox(conn: sqlite3.Connection, publisher: Publisher) -> int:
    """Publish every queued user; returns how many."""
    queued = conn.execute("SELECT email, queued_at FROM directory_outbox ORDER BY email").fetchall()
    for email, queued_at in queued:
        with contextlib.suppress(errors.BadInput):  # an address no entry may be named after
            publish_user(conn, publisher, email)
        conn.execute("DELETE FROM directory_outbox WHERE email = ? AND queued_at = ?", (email, queued_at))
    return len(queued)


def sync_all(conn: sqlite3.Connection, publisher: Publisher) -> int:
    """Republish every user's entry from the database and drop entries of no current certificate."""
    emails = []
    for email in (str(r[0]) for r in conn.execute("SELECT email FROM users ORDER BY email")):
        with contextlib.suppress(errors.BadInput):  # an address no entry may be named after
            publish_user(conn, publisher, email)
            emails.append(email)
    publisher.prune(emails)
    conn.execute("DELETE FROM directory_outbox")
    return len(emails)
