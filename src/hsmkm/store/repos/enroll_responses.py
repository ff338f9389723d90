"""Enrollment responses kept (sealed under the code) for a client that asks again."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, bindparam, func, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import enroll_responses as kept
from hsmkm.store.schema import enrollment_codes as codes


class ResponseKind(str, Enum):
    """Which answer is kept: the one-call enrollment's, or one EST stage's."""

    ENROLL = "enroll"
    SIGN = "sign"
    KEY = "key"


@dataclass(frozen=True)
class KeptResponse:
    """The user's latest code (whatever its state) with the response kept for it."""

    code_row: int
    verifier: bytes
    expires_at: str
    used_at: str | None
    salt: bytes
    sealed: bytes
    kept_at: str


_ADD = Prepared(kept.insert(), column_keys=("code_row", "stage", "kept_at", "salt", "sealed"))
_PURGE = Prepared(kept.delete().where(kept.c.kept_at < bindparam("before")))
_latest_id = select(func.max(codes.c.id)).where(codes.c.user_id == bindparam("uid")).scalar_subquery()
_FOR_LATEST = Prepared(
    select(
        codes.c.id, codes.c.verifier, codes.c.expires_at, codes.c.used_at, kept.c.salt, kept.c.sealed, kept.c.kept_at
    )
    .select_from(codes.join(kept, kept.c.code_row == codes.c.id))
    .where(codes.c.user_id == bindparam("uid"), codes.c.id == _latest_id, kept.c.stage == bindparam("stage"))
)


class EnrollResponseRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def keep(self, code_row: int, kept_at: str, salt: bytes, sealed: bytes, kind: ResponseKind) -> None:
        """Keep one response for the code and ``kind``; a second for the same pair is a Conflict."""
        _ADD.rowcount(
            self._conn,
            {"code_row": code_row, "stage": kind.value, "kept_at": kept_at, "salt": salt, "sealed": sealed},
        )

    def purge_before(self, before: str) -> None:
        """Drop responses kept before ``before`` (an index range)."""
        _PURGE.rowcount(self._conn, {"before": before})

    def for_latest_code(self, user_id: int, kind: ResponseKind) -> KeptResponse | None:
        """The user's latest code with its kept response of ``kind``, if that is kept."""
        row = _FOR_LATEST.first(self._conn, {"uid": user_id, "stage": kind.value})
        if row is None:
            return None
        return KeptResponse(
            int(row[0]),
            bytes(row[1]),
            str(row[2]),
            None if row[3] is None else str(row[3]),
            bytes(row[4]),
            bytes(row[5]),
            str(row[6]),
        )
