"""INSERT … ON CONFLICT DO UPDATE, in the dialect of the connection (SQLite and PostgreSQL say it alike)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def upsert(conn: Connection, table: Table, keys: tuple[str, ...], values: dict[str, Any]) -> None:
    """Insert ``values``, or on a clash of ``keys`` overwrite the other columns given."""
    make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = make(table).values(**values)
    update = {c: stmt.excluded[c] for c in values if c not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update))
