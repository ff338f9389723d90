"""Issued certificates, one row per serial; revocation marks a row, never deletes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, bindparam, func, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import certificates as certs
from hsmkm.store.schema import users

# The kind column holds a user certificate's x509 kind ('sign', 'encrypt') or this, for the CA's own.
CA_KIND = "ca"


class CertStatus(str, Enum):
    VALID = "valid"
    REVOKED = "revoked"


@dataclass(frozen=True)
class NewCert:
    serial: str
    user_id: int | None
    kind: str
    der: bytes
    not_before: str
    not_after: str
    issued_at: str


@dataclass(frozen=True)
class RevokedCert:
    """A revoked certificate recorded as such (synthetic history for benchmarks)."""

    serial: str
    kind: str
    der: bytes
    issued_at: str
    revoked_at: str
    reason: str
    revoked_seq: int


_ADD = certs.insert()
_ISSUE = Prepared(_ADD, column_keys=("serial", "user_id", "kind", "der", "not_before", "not_after", "issued_at"))
_RETIRE = Prepared(certs.update().where(certs.c.user_id == bindparam("uid"), certs.c.current == 1).values(current=0))
_RETIRE_KIND = Prepared(
    certs.update()
    .where(certs.c.user_id == bindparam("uid"), certs.c.kind == bindparam("k"), certs.c.current == 1)
    .values(current=0)
)
_VALID_CURRENT = Prepared(
    select(certs.c.serial, certs.c.der).where(
        certs.c.user_id == bindparam("uid"), certs.c.current == 1, certs.c.status == CertStatus.VALID.value
    )
)
_REVOKE = (
    certs.update()
    .where(certs.c.serial == bindparam("s"))
    .values(
        status=CertStatus.REVOKED.value,
        revoked_at=bindparam("at"),
        reason=bindparam("why"),
        revoked_seq=bindparam("seq"),
    )
)
_DER = select(certs.c.der).where(certs.c.serial == bindparam("s"))
_OF_USER = (
    select(
        certs.c.serial,
        certs.c.kind,
        certs.c.status,
        certs.c.current,
        certs.c.not_before,
        certs.c.not_after,
        certs.c.revoked_at,
        certs.c.reason,
        certs.c.der,
    )
    .where(certs.c.user_id == bindparam("uid"))
    .order_by(certs.c.issued_at, certs.c.serial)
)
_CURRENT_OF_KIND = (
    select(certs.c.der)
    .where(
        certs.c.user_id == bindparam("uid"),
        certs.c.kind == bindparam("kind"),
        certs.c.current == 1,
        certs.c.status == CertStatus.VALID.value,
    )
    .order_by(certs.c.issued_at.desc())
    .limit(1)
)
_ENTRY = Prepared(
    select(certs.c.kind, certs.c.der)
    .select_from(certs.join(users, users.c.id == certs.c.user_id))
    .where(users.c.email == bindparam("email"), certs.c.current == 1, certs.c.status == CertStatus.VALID.value)
    .order_by(certs.c.issued_at)
)


@dataclass(frozen=True)
class CertRow:
    serial: str
    kind: str
    status: CertStatus
    current: bool
    not_before: str
    not_after: str
    revoked_at: str | None
    reason: str | None
    der: bytes


class CertRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, cert: NewCert) -> None:
        """Record one certificate; a serial already there is a Conflict."""
        _ISSUE.rowcount(self._conn, _values(cert))

    def add_many(self, new: Sequence[NewCert]) -> None:
        """Record certificates in one batched statement; any serial already there is a Conflict
        (and none of them is recorded)."""
        _ISSUE.executemany(self._conn, [_values(c) for c in new])

    def add_revoked(self, rows: Sequence[RevokedCert]) -> None:
        """Record certificates already revoked and no longer current (one batched statement)."""
        if rows:
            self._conn.execute(
                _ADD,
                [
                    {
                        "serial": r.serial,
                        "user_id": None,
                        "kind": r.kind,
                        "der": r.der,
                        "not_before": r.issued_at,
                        "not_after": r.issued_at,
                        "issued_at": r.issued_at,
                        "status": CertStatus.REVOKED.value,
                        "current": 0,
                        "revoked_at": r.revoked_at,
                        "reason": r.reason,
                        "revoked_seq": r.revoked_seq,
                    }
                    for r in rows
                ],
            )

    def serials_taken(self, serials: Sequence[str]) -> set[str]:
        return {str(r[0]) for r in self._conn.execute(select(certs.c.serial).where(certs.c.serial.in_(serials)))}

    def retire_current(self, user_id: int) -> None:
        """The user's current certificates stop being current (a new pair replaces them)."""
        _RETIRE.rowcount(self._conn, {"uid": user_id})

    def retire_current_of_kind(self, user_id: int, kind: str) -> None:
        """The user's current certificates of this kind stop being current (one stage replaces them)."""
        _RETIRE_KIND.rowcount(self._conn, {"uid": user_id, "k": kind})

    def valid_current(self, user_id: int) -> list[tuple[str, bytes]]:
        """Serial and DER of the user's current valid certificates."""
        return [(str(r[0]), bytes(r[1])) for r in _VALID_CURRENT.all(self._conn, {"uid": user_id})]

    def revoke(self, serial: str, at: str, reason: str, revoked_seq: int) -> None:
        self._conn.execute(_REVOKE, {"s": serial, "at": at, "why": reason, "seq": revoked_seq})

    def der(self, serial: str) -> bytes | None:
        value = self._conn.execute(_DER, {"s": serial}).scalar()
        return None if value is None else bytes(value)

    def of_user(self, user_id: int) -> list[CertRow]:
        """Every certificate of the user, current and past, in the order they were issued."""
        return [
            CertRow(str(r[0]), str(r[1]), CertStatus(r[2]), bool(r[3]), str(r[4]), str(r[5]), r[6], r[7], bytes(r[8]))
            for r in self._conn.execute(_OF_USER, {"uid": user_id})
        ]

    def current_of_kind(self, user_id: int, kind: str) -> bytes | None:
        """DER of the user's current valid certificate of this kind (the newest), if any."""
        value = self._conn.execute(_CURRENT_OF_KIND, {"uid": user_id, "kind": kind}).scalar()
        return None if value is None else bytes(value)

    def directory_entry(self, email: str) -> dict[str, bytes]:
        """The user's current valid certificates by kind: what the directory publishes."""
        return {str(r[0]): bytes(r[1]) for r in _ENTRY.all(self._conn, {"email": email})}

    def count_issued(self) -> int:
        """User certificates (the CA's own aside)."""
        stmt = select(func.count()).select_from(certs).where(certs.c.kind != CA_KIND)
        return int(self._conn.execute(stmt).scalar_one())

    def count_revoked(self) -> int:
        stmt = select(func.count()).select_from(certs).where(certs.c.status == CertStatus.REVOKED.value)
        return int(self._conn.execute(stmt).scalar_one())


def _values(c: NewCert) -> dict[str, object]:
    return {
        "serial": c.serial,
        "user_id": c.user_id,
        "kind": c.kind,
        "der": c.der,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "issued_at": c.issued_at,
    }
