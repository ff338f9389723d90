"""Users: one row per address, with a status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import users


class UserStatus(str, Enum):
    PENDING = "pending"  # has a code, not yet enrolled
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str | None
    status: UserStatus
    created_at: str


@dataclass(frozen=True)
class NewUser:
    email: str
    name: str | None
    status: UserStatus
    created_at: str


_COLUMNS = (users.c.id, users.c.email, users.c.name, users.c.status, users.c.created_at)
_BY_EMAIL = Prepared(select(*_COLUMNS).where(users.c.email == bindparam("email")))
_BY_ID = Prepared(select(*_COLUMNS).where(users.c.id == bindparam("id")))
_ALL = select(*_COLUMNS).order_by(users.c.email)
_EMAILS = select(users.c.email)
_ADD = users.insert().returning(users.c.id)
_SET_STATUS = Prepared(users.update().where(users.c.id == bindparam("uid")).values(status=bindparam("new_status")))


def _user(row: Any) -> User:  # a Row of _COLUMNS
    return User(row[0], row[1], row[2], UserStatus(row[3]), row[4])


class UserRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def by_email(self, email: str) -> User | None:
        row = _BY_EMAIL.first(self._conn, {"email": email})
        return None if row is None else _user(row)

    def by_id(self, user_id: int) -> User | None:
        row = _BY_ID.first(self._conn, {"id": user_id})
        return None if row is None else _user(row)

    def all(self) -> list[User]:
        return [_user(r) for r in self._conn.execute(_ALL)]

    def emails(self) -> set[str]:
        return {str(r[0]) for r in self._conn.execute(_EMAILS)}

    def add(self, user: NewUser) -> int:
        """Insert one user; returns its id."""
        return int(self._conn.execute(_ADD, _values(user)).scalar_one())

    def add_many(self, new: Sequence[NewUser]) -> list[int]:
        """Insert many users in one batched statement; their ids, in the order given."""
        if not new:
            return []
        stmt = users.insert().returning(users.c.id, sort_by_parameter_order=True)
        return [int(r[0]) for r in self._conn.execute(stmt, [_values(u) for u in new])]

    def set_status(self, user_id: int, status: UserStatus) -> None:
        _SET_STATUS.rowcount(self._conn, {"uid": user_id, "new_status": status.value})

    def count(self) -> int:
        return int(self._conn.execute(select(func.count()).select_from(users)).scalar_one())


def _values(u: NewUser) -> dict[str, object]:
    return {"email": u.email, "name": u.name, "status": u.status.value, "created_at": u.created_at}
