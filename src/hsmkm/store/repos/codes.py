"""One-time enrollment codes: only a verifier is kept; a code is used, replaced or burnt once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, bindparam, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import enrollment_codes as codes
from hsmkm.store.schema import users


class CodePurpose(str, Enum):
    ENROLL = "enroll"
    REENABLE = "reenable"
    RECOVERY = "recovery"


class CodeStage(str, Enum):
    """The two stages of an EST enrollment with one code."""

    SIGN = "sign"  # simpleenroll: the signing certificate
    KEY = "key"  # serverkeygen: the encryption key and its certificate


@dataclass(frozen=True)
class NewCode:
    user_id: int
    code_id: str
    verifier: bytes
    purpose: CodePurpose
    created_at: str
    expires_at: str
    max_attempts: int
    recovery_id: int | None = None


@dataclass(frozen=True)
class CodeRecord:
    """A code's row as the check reads it."""

    id: int
    verifier: bytes
    purpose: CodePurpose
    expires_at: str
    attempts: int
    max_attempts: int
    used_at: str | None
    recovery_id: int | None
    stages_done: frozenset[CodeStage] = frozenset()


_STAGE_COLUMN = {CodeStage.SIGN: codes.c.sign_done_at, CodeStage.KEY: codes.c.key_done_at}
# A stage is marked only on a live code whose stage is not yet done.
_MARK_STAGE = {
    stage: Prepared(
        codes.update()
        .where(codes.c.id == bindparam("cid"), column.is_(None), codes.c.used_at.is_(None))
        .values({column.name: bindparam("at")})
    )
    for stage, column in _STAGE_COLUMN.items()
}
_SUPERSEDE = Prepared(
    codes.update().where(codes.c.user_id == bindparam("uid"), codes.c.used_at.is_(None)).values(used_at=bindparam("at"))
)
_COLUMNS = ("user_id", "code_id", "verifier", "purpose", "created_at", "expires_at", "max_attempts", "recovery_id")
_ADD = Prepared(codes.insert().returning(codes.c.id), column_keys=_COLUMNS)
_LATEST = Prepared(
    select(
        codes.c.id,
        codes.c.verifier,
        codes.c.purpose,
        codes.c.expires_at,
        codes.c.attempts,
        codes.c.max_attempts,
        codes.c.used_at,
        codes.c.recovery_id,
        codes.c.sign_done_at,
        codes.c.key_done_at,
    )
    .where(codes.c.user_id == bindparam("uid"))
    .order_by(codes.c.id.desc())
    .limit(1)
)
_ATTEMPT = Prepared(codes.update().where(codes.c.id == bindparam("cid")).values(attempts=codes.c.attempts + 1))
_BURN = Prepared(codes.update().where(codes.c.id == bindparam("cid")).values(used_at=bindparam("at")))
_FIRST_VERIFIER = (
    select(codes.c.verifier)
    .select_from(users.join(codes, codes.c.user_id == users.c.id))
    .where(users.c.email == bindparam("email"))
    .order_by(codes.c.id)
    .limit(1)
)


def _values(c: NewCode) -> dict[str, object]:
    return {
        "user_id": c.user_id,
        "code_id": c.code_id,
        "verifier": c.verifier,
        "purpose": c.purpose.value,
        "created_at": c.created_at,
        "expires_at": c.expires_at,
        "max_attempts": c.max_attempts,
        "recovery_id": c.recovery_id,
    }


class CodeRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def supersede(self, user_id: int, at: str) -> None:
        """Mark every unused code of the user used (``at`` says why)."""
        _SUPERSEDE.rowcount(self._conn, {"uid": user_id, "at": at})

    def add(self, code: NewCode) -> int:
        return int(_ADD.scalar(self._conn, _values(code)))

    def add_many(self, new: Sequence[NewCode]) -> None:
        """Insert many codes in one batched statement (executemany)."""
        if new:
            self._conn.execute(codes.insert(), [_values(c) for c in new])

    def latest(self, user_id: int) -> CodeRecord | None:
        row = _LATEST.first(self._conn, {"uid": user_id})
        if row is None:
            return None
        return CodeRecord(
            int(row[0]),
            bytes(row[1]),
            CodePurpose(row[2]),
            str(row[3]),
            int(row[4]),
            int(row[5]),
            None if row[6] is None else str(row[6]),
            row[7],
            frozenset(s for s, at in ((CodeStage.SIGN, row[8]), (CodeStage.KEY, row[9])) if at is not None),
        )

    def count_attempt(self, code_row: int) -> None:
        _ATTEMPT.rowcount(self._conn, {"cid": code_row})

    def burn(self, code_row: int, at: str) -> None:
        _BURN.rowcount(self._conn, {"cid": code_row, "at": at})

    def mark_stage(self, code_row: int, stage: CodeStage, at: str) -> bool:
        """Record ``stage`` of a live code done; False if it was done already or the code is used."""
        return _MARK_STAGE[stage].rowcount(self._conn, {"cid": code_row, "at": at}) == 1

    def first_verifier(self, email: str) -> bytes | None:
        """The verifier of the first code issued to the user at ``email``."""
        value = self._conn.execute(_FIRST_VERIFIER, {"email": email}).scalar()
        return None if value is None else bytes(value)
