"""The audit log's rows and its MAC'd head (kept in meta 'audit_head')."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import audit, meta
from hsmkm.store.upsert import upsert

HEAD_KEY = "audit_head"
CRL_NUMBER_KEY = "crl_number"


@dataclass(frozen=True)
class AuditRow:
    seq: int
    at: str
    actor: str
    action: str
    details: str
    prev_hash: bytes
    hash: bytes
    mac: bytes


_LAST = Prepared(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1))
_HEAD_SELECT = select(meta.c.value).where(meta.c.key == HEAD_KEY)
_HEAD = Prepared(_HEAD_SELECT)
_HEAD_LOCKED = Prepared(_HEAD_SELECT.with_for_update())
_CRL_NUMBER = Prepared(select(meta.c.value).where(meta.c.key == CRL_NUMBER_KEY))
_HASH_AT = Prepared(select(audit.c.hash).where(audit.c.seq == bindparam("seq")))
_COLUMNS = ("seq", "at", "actor", "action", "details", "prev_hash", "hash", "mac")
_APPEND = Prepared(audit.insert(), column_keys=_COLUMNS)
_ALL = select(audit).order_by(audit.c.seq)
_BY_ACTION = select(audit).where(audit.c.action == bindparam("action")).order_by(audit.c.seq)


def _values(r: AuditRow) -> dict[str, object]:
    return {
        "seq": r.seq,
        "at": r.at,
        "actor": r.actor,
        "action": r.action,
        "details": r.details,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
        "mac": r.mac,
    }


class AuditRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def last(self) -> tuple[int, bytes] | None:
        """The last entry's seq and stored hash."""
        row = _LAST.first(self._conn)
        return None if row is None else (int(row[0]), bytes(row[1]))

    def hash_at(self, seq: int) -> bytes | None:
        """The stored hash of entry ``seq``."""
        value = _HASH_AT.scalar(self._conn, {"seq": seq})
        return None if value is None else bytes(value)

    def head(self, lock: bool = False) -> str | None:
        """The stored head (``seq:hash:mac``). With ``lock`` the row is held to this
        transaction where the backend locks rows: the appender that holds it owns the next seq."""
        stmt = _HEAD_LOCKED if lock else _HEAD
        value = stmt.scalar(self._conn)
        return None if value is None else str(value)

    def append(self, rows: Sequence[AuditRow], head: str) -> None:
        """Insert entries (one batched statement) and set the head they end at."""
        if len(rows) == 1:
            _APPEND.rowcount(self._conn, _values(rows[0]))
        elif rows:
            _APPEND.executemany(self._conn, [_values(r) for r in rows])
        upsert(self._conn, meta, ("key",), {"key": HEAD_KEY, "value": head})

    def rows(self, action: str | None = None) -> Iterator[AuditRow]:
        """Every entry in seq order, streamed."""
        result = self._conn.execute(_ALL) if action is None else self._conn.execute(_BY_ACTION, {"action": action})
        for r in result:
            yield AuditRow(int(r[0]), r[1], r[2], r[3], r[4], bytes(r[5]), bytes(r[6]), bytes(r[7]))

    def count(self) -> int:
        return int(self._conn.execute(select(func.count()).select_from(audit)).scalar_one())

    def crl_number(self) -> int:
        """The last CRL number the database says was drawn (0 before the first)."""
        value = _CRL_NUMBER.scalar(self._conn)
        return 0 if value is None else int(value)
