"""The CRLs drawn: their numbers (a counter row drawn with RETURNING), kinds and windows, and
the revocations a CRL lists, streamed in the order they happened."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text

from hsmkm.store.schema import certificates as certs
from hsmkm.store.schema import crls

# The number is kept in meta 'crl_number', where the audit anchors read it.
CRL_NUMBER_KEY = "crl_number"
_SEED = text("INSERT INTO meta(key, value) VALUES (:k, '0') ON CONFLICT(key) DO NOTHING")
_DRAW = text("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = :k RETURNING value")
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


_RECORD = crls.insert()
_LAST = (
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
_UPTO = select(func.coalesce(func.max(certs.c.revoked_seq), 0))
_WINDOW = (certs.c.revoked_seq > bindparam("after")) & (certs.c.revoked_seq <= bindparam("upto"))
_COUNT = select(func.count()).select_from(certs).where(_WINDOW)
_REVOKED = select(certs.c.serial, certs.c.revoked_at, certs.c.reason).where(_WINDOW).order_by(certs.c.revoked_seq)


class CrlRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def draw_number(self) -> int:
        """The next CRL number: the counter row's new value under its row lock, so two
        publishers never draw the same one."""
        self._conn.execute(_SEED, {"k": CRL_NUMBER_KEY})
        return int(self._conn.execute(_DRAW, {"k": CRL_NUMBER_KEY}).scalar_one())

    def record(self, row: CrlRow) -> None:
        self._conn.execute(
            _RECORD,
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
        r = self._conn.execute(_LAST, {"kind": kind.value}).first()
        if r is None:
            return None
        return CrlRow(
            int(r[0]), CrlKind(r[1]), None if r[2] is None else int(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6])
        )

    def revoked_upto(self) -> int:
        """The revocation order reached so far (0 before the first revocation)."""
        return int(self._conn.execute(_UPTO).scalar_one())

    def count_revoked(self, after: int, upto: int) -> int:
        return int(self._conn.execute(_COUNT, {"after": after, "upto": upto}).scalar_one())

    def revoked(self, after: int, upto: int) -> Iterator[tuple[str, str, str]]:
        """(serial hex, revocation time ISO, reason) of the revocations in (after, upto], in
        the order they happened (the revoked_seq index gives them without a sort)."""
        # The hot path of a million-entry CRL: the statement compiled for this dialect runs on
        # the driver's own cursor, in this transaction, and rows come in batches of the
        # driver's tuples (a Row object per entry costs as much again as the reading).
        compiled = _REVOKED.compile(dialect=self._conn.dialect)
        params = compiled.construct_params({"after": after, "upto": upto})
        args: Any = [params[k] for k in compiled.positiontup or ()] if compiled.positional else params
        cursor = self._conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(str(compiled), args)
            while rows := cursor.fetchmany(_STREAM_ROWS):
                yield from rows
        finally:
            cursor.close()
