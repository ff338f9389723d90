"""The meta table: small named values (archive key label, share epoch, audit head, …)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import meta
from hsmkm.store.upsert import upsert

_SELECT = select(meta.c.value).where(meta.c.key == bindparam("key"))
_GET = Prepared(_SELECT)
_GET_LOCKED = Prepared(_SELECT.with_for_update())
_DELETE = Prepared(meta.delete().where(meta.c.key == bindparam("key")))


class MetaRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, key: str) -> str | None:
        value = _GET.scalar(self._conn, {"key": key})
        return None if value is None else str(value)

    def get_for_update(self, key: str) -> str | None:
        """The value, its row locked to this transaction where the backend locks rows."""
        value = _GET_LOCKED.scalar(self._conn, {"key": key})
        return None if value is None else str(value)

    def set(self, key: str, value: str) -> None:
        upsert(self._conn, meta, ("key",), {"key": key, "value": value})

    def delete(self, key: str) -> None:
        _DELETE.rowcount(self._conn, {"key": key})
