"""The directory outbox: users whose directory entries are to be published after a commit."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import directory_outbox as outbox
from hsmkm.store.upsert import upsert

_QUEUED = Prepared(select(outbox.c.email, outbox.c.queued_at).order_by(outbox.c.email))
_DONE = Prepared(outbox.delete().where(outbox.c.email == bindparam("e"), outbox.c.queued_at == bindparam("at")))


class OutboxRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def queue(self, email: str, at: str) -> None:
        """Queue the user (again: the later time wins, so a drain that read before it keeps it)."""
        upsert(self._conn, outbox, ("email",), {"email": email, "queued_at": at})

    def queued(self) -> list[tuple[str, str]]:
        """(address, queued at) of every queued user, by address."""
        return [(str(r[0]), str(r[1])) for r in _QUEUED.all(self._conn)]

    def done(self, email: str, at: str) -> None:
        """Drop the user's row if it was not queued again since ``at``."""
        _DONE.rowcount(self._conn, {"e": email, "at": at})

    def clear(self) -> None:
        self._conn.execute(outbox.delete())
