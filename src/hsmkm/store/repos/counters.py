"""Counters drawn inside a write transaction: UPDATE … RETURNING, so each draw is the row's
new value under that row's lock (no MAX()+1 that only a single writer keeps right)."""

from __future__ import annotations

from enum import Enum

from sqlalchemy import Connection, bindparam, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import counters


class Counter(str, Enum):
    REVOKED_SEQ = "revoked_seq"  # the order revocations were made in (delta CRLs read from it)


_DRAW = Prepared(
    counters.update()
    .where(counters.c.name == bindparam("counter"))
    .values(value=counters.c.value + bindparam("n"))
    .returning(counters.c.value)
)
_GET = Prepared(select(counters.c.value).where(counters.c.name == bindparam("counter")))


class CounterRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def draw(self, counter: Counter, n: int = 1) -> int:
        """Advance the counter by ``n`` and return its new value: the caller owns the ``n``
        values ending there."""
        value = _DRAW.scalar(self._conn, {"counter": counter.value, "n": n})
        if value is None:
            raise LookupError(f"no counter {counter.value} in the database")
        return int(value)

    def current(self, counter: Counter) -> int:
        value = _GET.scalar(self._conn, {"counter": counter.value})
        return 0 if value is None else int(value)
