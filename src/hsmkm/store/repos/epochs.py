"""Share epochs: the officer sets (with their Shamir indices) and quorums records are split
for, their members' attestations, and which one is active."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, bindparam, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from hsmkm.store.lean import Prepared
from hsmkm.store.repos.recovery import RequestStatus, request_status
from hsmkm.store.schema import (
    counters,
    epoch_attestations,
    epoch_officers,
    recovery_requests,
    share_epochs,
)
from hsmkm.store.upsert import upsert

e = share_epochs

# The counter epoch numbers are drawn from; seeded from the epochs there on its first draw.
EPOCH_COUNTER = "share_epoch"


class EpochStatus(str, Enum):
    ACTIVE = "active"
    PENDING = "pending"
    RETIRED = "retired"


@dataclass(frozen=True)
class EpochRow:
    number: int
    quorum: int
    status: EpochStatus
    request_id: int | None


@dataclass(frozen=True)
class EpochHistory:
    """An epoch with the status of the change request that made it (None: no request, or a
    status the enum does not know)."""

    epoch: EpochRow
    request_status: RequestStatus | None


_COLUMNS = (e.c.epoch, e.c.quorum, e.c.status, e.c.request_id)
_GET = select(*_COLUMNS).where(e.c.epoch == bindparam("n"))
_BY_STATUS = select(*_COLUMNS).where(e.c.status == bindparam("status"))
# Read by every enrollment: prepared (the two statuses spelt out, as a prepared statement
# takes no IN list).
_IS_SHARING = or_(e.c.status == EpochStatus.ACTIVE.value, e.c.status == EpochStatus.PENDING.value)
_SHARING = Prepared(select(*_COLUMNS).where(_IS_SHARING).order_by(e.c.epoch))
_SHARING_NUMBERS = Prepared(select(e.c.epoch).where(_IS_SHARING).order_by(e.c.epoch))
_OFFICERS = Prepared(
    select(epoch_officers.c.officer, epoch_officers.c.x, epoch_officers.c.public_key)
    .where(epoch_officers.c.epoch == bindparam("n"))
    .order_by(epoch_officers.c.x)
)
_ADD = e.insert()
_ADD_OFFICER = epoch_officers.insert()
_RETIRE_OTHERS = e.update().where(e.c.epoch != bindparam("n")).values(status=EpochStatus.RETIRED.value)
_ACTIVATE = e.update().where(e.c.epoch == bindparam("n")).values(status=EpochStatus.ACTIVE.value)
_RETIRE_PENDING = (
    e.update()
    .where(e.c.epoch == bindparam("n"), e.c.status == EpochStatus.PENDING.value)
    .values(status=EpochStatus.RETIRED.value)
)
_ATTESTATIONS = select(epoch_attestations.c.officer, epoch_attestations.c.signature).where(
    epoch_attestations.c.epoch == bindparam("n")
)
_HISTORY = (
    select(*_COLUMNS, recovery_requests.c.status)
    .select_from(e.outerjoin(recovery_requests, recovery_requests.c.id == e.c.request_id))
    .order_by(e.c.epoch)
)
_PENDING_CHANGES = (
    select(e.c.epoch, recovery_requests.c.status, recovery_requests.c.expires_at)
    .select_from(e.join(recovery_requests, recovery_requests.c.id == e.c.request_id))
    .where(e.c.status == EpochStatus.PENDING.value)
)
_PENDING_REQUESTS = select(e.c.request_id).where(e.c.status == EpochStatus.PENDING.value, e.c.epoch != bindparam("n"))


def _epoch(row: Any) -> EpochRow:
    return EpochRow(
        int(row[0]),
        int(row[1]),
        EpochStatus(row[2]),
        None if row[3] is None else int(row[3]),
    )


class EpochRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, number: int) -> EpochRow | None:
        row = self._conn.execute(_GET, {"n": number}).first()
        return None if row is None else _epoch(row)

    def active(self) -> EpochRow | None:
        row = self._conn.execute(_BY_STATUS, {"status": EpochStatus.ACTIVE.value}).first()
        return None if row is None else _epoch(row)

    def sharing(self) -> list[EpochRow]:
        """The active epoch and any pending ones, in order."""
        return [_epoch(row) for row in _SHARING.all(self._conn)]

    def sharing_numbers(self) -> tuple[int, ...]:
        return tuple(int(row[0]) for row in _SHARING_NUMBERS.all(self._conn))

    def officers(self, number: int) -> list[tuple[str, int, bytes]]:
        """Name, Shamir index and public key (DER) of each member, by index."""
        return [(str(o[0]), int(o[1]), bytes(o[2])) for o in _OFFICERS.all(self._conn, {"n": number})]

    def _next_number(self) -> int:
        # A counter row drawn with RETURNING, seeded from the highest epoch on its first draw.
        make = postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert
        seed = select(func.coalesce(func.max(e.c.epoch), 0) + 1).scalar_subquery()
        stmt = make(counters).values(name=EPOCH_COUNTER, value=seed)
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"value": counters.c.value + 1})
        return int(self._conn.execute(stmt.returning(counters.c.value)).scalar_one())

    def create(
        self, quorum: int, status: EpochStatus, request_id: int | None, officers: Sequence[tuple[str, int, bytes]]
    ) -> int:
        """A new epoch with its members (name, index, public key DER); returns its number."""
        number = self._next_number()
        self._conn.execute(_ADD, {"epoch": number, "quorum": quorum, "status": status.value, "request_id": request_id})
        if officers:
            self._conn.execute(
                _ADD_OFFICER,
                [{"epoch": number, "officer": name, "x": x, "public_key": der} for name, x, der in officers],
            )
        return number

    def activate(self, number: int) -> None:
        """``number`` active, every other epoch retired."""
        self._conn.execute(_RETIRE_OTHERS, {"n": number})
        self._conn.execute(_ACTIVATE, {"n": number})

    def retire_pending(self, number: int) -> None:
        self._conn.execute(_RETIRE_PENDING, {"n": number})

    def attest(self, number: int, officer: str, signature: bytes) -> None:
        upsert(
            self._conn,
            epoch_attestations,
            ("epoch", "officer"),
            {"epoch": number, "officer": officer, "signature": signature},
        )

    def attestations(self, number: int) -> dict[str, bytes]:
        return {str(a[0]): bytes(a[1]) for a in self._conn.execute(_ATTESTATIONS, {"n": number})}

    def history(self) -> list[EpochHistory]:
        """Every epoch, in order, with the status of the request that made it."""
        return [
            EpochHistory(_epoch(row), None if row[4] is None else request_status(row[4]))
            for row in self._conn.execute(_HISTORY)
        ]

    def pending_changes(self) -> list[tuple[int, RequestStatus | None, str]]:
        """Each pending epoch made by a request: its number, the request's status and expiry."""
        return [(int(p[0]), request_status(p[1]), str(p[2])) for p in self._conn.execute(_PENDING_CHANGES)]

    def pending_requests(self, except_epoch: int) -> list[int]:
        """The requests of the pending epochs other than ``except_epoch``."""
        return [int(p[0]) for p in self._conn.execute(_PENDING_REQUESTS, {"n": except_epoch}) if p[0] is not None]
