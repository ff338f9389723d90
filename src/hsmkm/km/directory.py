"""The directory: each user's current certificates, looked up by address."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hsmkm import errors
from hsmkm.addresses import address_file
from hsmkm.atomic import sweep_temps, write_atomic
from hsmkm.km.config import Home
from hsmkm.km import users
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


# --- the directory's files: derived from the database ------------------------------------------
#
# A change of a user's certificates queues the user in ``directory_outbox`` inside its own
# transaction; the files are written after the commit and the entry dropped. A crash in
# between leaves the entry, and the next command drains it: the files are never missing for
# long, and never outlive a revocation (revoking removes them before it commits).


def queue(conn: sqlite3.Connection, email: str, now: str) -> None:
    """Queue the user's directory files for rewriting (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO directory_outbox(email, queued_at) VALUES (?, ?) "
        "ON CONFLICT(email) DO UPDATE SET queued_at = excluded.queued_at",
        (email, now),
    )


def cert_files(certs_dir: Path, email: str) -> dict[CertKind, Path]:
    """The user's files; an address that would name a path outside the folder is refused."""
    return {kind: address_file(certs_dir, email, f".{_SUFFIX[kind]}.crt") for kind in (CertKind.ENCRYPT, CertKind.SIGN)}


_SUFFIX = {CertKind.ENCRYPT: "enc", CertKind.SIGN: "sign"}


@contextlib.contextmanager
def _files_lock(home: Home) -> Iterator[None]:
    """Serialises reading the database and writing a user's files across processes, so a
    publisher that read before a revocation never writes after the revoker's own sync."""
    home.temp_dir.mkdir(parents=True, exist_ok=True)
    with open(home.temp_dir / ".directory.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def remove_files(home: Home, email: str) -> None:
    with _files_lock(home):
        for path in cert_files(home.certs_dir, email).values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def publish_user(conn: sqlite3.Connection, home: Home, email: str) -> None:
    """Write (or remove) the user's files so they match the database's current certificates."""
    with _files_lock(home):
        rows = dict(conn.execute(
            "SELECT c.kind, c.der FROM certificates c JOIN users u ON u.id = c.user_id WHERE u.email = ? "
            "AND c.current = 1 AND c.status = 'valid' ORDER BY c.issued_at",
            (email,),
        ).fetchall())
        for kind, path in cert_files(home.certs_dir, email).items():
            der = rows.get(kind.value)
            if der is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            try:
                if path.read_bytes() == bytes(der):
                    continue
            except OSError:
                pass
            # Derived from the database, so no fsync: readers still see whole files (rename).
            # The temporary file is made outside pub/certs, too large to list on each write.
            write_atomic(path, bytes(der), 0o644, durable=False, temp_dir=home.temp_dir)


def drain_outbox(conn: sqlite3.Connection, home: Home) -> int:
    """Publish every queued user; returns how many."""
    queued = conn.execute("SELECT email, queued_at FROM directory_outbox ORDER BY email").fetchall()
    for email, queued_at in queued:
        with contextlib.suppress(errors.BadInput):  # an address no file may be named after
            publish_user(conn, home, email)
        conn.execute("DELETE FROM directory_outbox WHERE email = ? AND queued_at = ?", (email, queued_at))
    return len(queued)


def sync_all(conn: sqlite3.Connection, home: Home) -> int:
    """Rewrite every user's files from the database and remove files of no current certificate."""
    certs_dir = home.certs_dir
    emails = []
    for email in (str(r[0]) for r in conn.execute("SELECT email FROM users ORDER BY email")):
        with contextlib.suppress(errors.BadInput):  # an address no file may be named after
            publish_user(conn, home, email)
            emails.append(email)
    wanted = {p.name for e in emails for p in cert_files(certs_dir, e).values() if p.exists()}
    if certs_dir.is_dir():
        for path in certs_dir.glob("*.crt"):
            if path.name not in wanted:
                path.unlink()
    conn.execute("DELETE FROM directory_outbox")
    sweep_temps(certs_dir)  # temporary files of earlier releases, written beside the certificates
    return len(emails)
