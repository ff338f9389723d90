"""The CRLs drawn: their numbers (a counter row drawn with RETURNING), kinds and windows, and
the revocations a CRL lists, streamed in the order they happened."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, bindparam, func, select, text

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import certificates as certs
from hsmkm.store.schema import crls

# The number is kept in meta 'crl_number', where the audit anchors read it.
CRL_NUMBER_KEY = "crl_number"
_SEED = Prepared(text("INSERT INTO meta(key, value) VALUES (:k, '0') ON CONFLICT(key) DO NOTHING"))
_DRAW = Prepared(
    text("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = :k RETURNING value")
)
# Rows are handed to the encoder as the driver reads them, never as one list.
_STREAM_ROWS = 10_000


class CrlKind(str, Enum):
    FULL = "full"
    DELTA = "delta"


@dataclass(frozen=True)
class CrlRow:
    number: int
    kind: CrlKind
    base: int | None
    this_update: str
    next_update: str
    entries: int
    revoked_seq_upto: int


_RECORD = Prepared(
    crls.insert(), column_keys=("number", "kind", "base", "this_update", "next_update", "entries", "revoked_seq_upto")
)
_LAST = Prepared(
    select(
        crls.c.number,
        crls.c.kind,
        crls.c.base,
        crls.c.this_update,
        crls.c.next_update,
        crls.c.entries,
        crls.c.revoked_seq_upto,
    )
    .where(crls.c.kind == bindparam("kind"))
    .order_by(crls.c.number.desc())
    .limit(1)
)
_UPTO = Prepared(select(func.coalesce(func.max(certs.c.revoked_seq), 0)))
_WINDOW = (certs.c.revoked_seq > bindparam("after")) & (certs.c.revoked_seq <= bindparam("upto"))
_COUNT = Prepared(select(func.count()).select_from(certs).where(_WINDOW))
_REVOKED = Prepared(
    select(certs.c.serial, certs.c.revoked_at, certs.c.reason).where(_WINDOW).order_by(certs.c.revoked_seq)
)


class CrlRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def draw_number(self) -> int:
        """The next CRL number: the counter row's new value under its row lock, so two
        publishers never draw the same one."""
        _SEED.rowcount(self._conn, {"k": CRL_NUMBER_KEY})
        return int(_DRAW.scalar(self._conn, {"k": CRL_NUMBER_KEY}))

    def record(self, row: CrlRow) -> None:
        _RECORD.rowcount(
            self._conn,
            {
                "number": row.number,
                "kind": row.kind.value,
                "base": row.base,
                "this_update": row.this_update,
                "next_update": row.next_update,
                "entries": row.entries,
                "revoked_seq_upto": row.revoked_seq_upto,
            },
        )

    def last(self, kind: CrlKind) -> CrlRow | None:
        r = _LAST.first(self._conn, {"kind": kind.value})
        if r is None:
            return None
        return CrlRow(
            int(r[0]), CrlKind(r[1]), None if r[2] is None else int(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6])
        )

    def revoked_upto(self) -> int:
        """The revocation order reached so far (0 before the first revocation)."""
        return int(_UPTO.scalar(self._conn))

    def count_revoked(self, after: int, upto: int) -> int:
        return int(_COUNT.scalar(self._conn, {"after": after, "upto": upto}))

    def revoked(self, after: int, upto: int) -> Iterator[Sequence[tuple[str, str, str]]]:
        """(serial hex, revocation time ISO, reason) of the revocations in (after, upto], in
        the order they happened (the revoked_seq index gives them without a sort), in
        batches as the driver reads them."""
        # The hot path of a million-entry CRL: the driver's own tuples, a batch at a time (a
        # Row object, or a generator step, per entry costs as much again as the reading).
        cursor = _REVOKED.execute(self._conn, {"after": after, "upto": upto})
        try:
            while rows := _REVOKED.fetchmany(self._conn, cursor, _STREAM_ROWS):
                yield rows
        finally:
            cursor.close()
