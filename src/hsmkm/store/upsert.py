"""INSERT … ON CONFLICT DO UPDATE, in the dialect of the connection (SQLite and PostgreSQL say it alike)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite

from hsmkm.store.lean import Prepared

# Built once per (dialect, table, key columns, columns): statement construction costs more
# than its execution, and the audit append sets the head on every state change.
_CACHE: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Prepared] = {}


def _statement(dialect: str, table: Table, keys: tuple[str, ...], columns: tuple[str, ...]) -> Prepared:
    key = (dialect, table.name, keys, columns)
    stmt = _CACHE.get(key)
    if stmt is None:
        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        ins = make(table).values({c: bindparam(f"v_{c}") for c in columns})
        stmt = Prepared(
            ins.on_conflict_do_update(
                index_elements=list(keys), set_={c: ins.excluded[c] for c in columns if c not in keys}
            )
        )
        _CACHE[key] = stmt
    return stmt


def upsert(conn: Connection, table: Table, keys: tuple[str, ...], values: dict[str, Any]) -> None:
    """Insert ``values``, or on a clash of ``keys`` overwrite the other columns given."""
    stmt = _statement(conn.dialect.name, table, keys, tuple(values))
    stmt.rowcount(conn, {f"v_{c}": v for c, v in values.items()})
