"""The meta table: small named values (archive key label, share epoch, audit head, …)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from hsmkm.store.schema import meta
from hsmkm.store.upsert import upsert

_GET = select(meta.c.value).where(meta.c.key == bindparam("key"))
_GET_LOCKED = _GET.with_for_update()
_DELETE = meta.delete().where(meta.c.key == bindparam("key"))


class MetaRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, key: str) -> str | None:
        value = self._conn.execute(_GET, {"key": key}).scalar()
        return None if value is None else str(value)

    def get_for_update(self, key: str) -> str | None:
        """The value, its row locked to this transaction where the backend locks rows."""
        value = self._conn.execute(_GET_LOCKED, {"key": key}).scalar()
        return None if value is None else str(value)

    def set(self, key: str, value: str) -> None:
        upsert(self._conn, meta, ("key",), {"key": key, "value": value})

    def delete(self, key: str) -> None:
        self._conn.execute(_DELETE, {"key": key})
