"""The directory: each user's current certificates, looked up by address."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from cryptography import x509

from hsmkm import errors
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
    user = users.find_user(conn, email)
    row = conn.execute(
        "SELECT der FROM certificates WHERE user_id = ? AND kind = ? AND current = 1 AND status = 'valid' "
        "ORDER BY issued_at DESC LIMIT 1",
        (user.id, kind.value),
    ).fetchone()
    if row is None:
        raise errors.NotFound(f"{user.email} has no current {kind.value} certificate")
    return x509.load_der_x509_certificate(bytes(row[0]))
