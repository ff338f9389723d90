"""Archive shares: each record's key split K-of-N, one sealed share per officer and epoch."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, and_, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from hsmkm.store.schema import archive, archive_shares

s = archive_shares

_CHUNK = 500

_OFFICER_RECORDS = (
    select(archive.c.id, archive.c.user_id, archive.c.cert_serial, s.c.sealed)
    .select_from(s.join(archive, archive.c.id == s.c.record_id))
    .where(s.c.epoch == bindparam("n"), s.c.officer == bindparam("officer"))
    .order_by(archive.c.id)
)
_COUNTS = (
    select(archive.c.id, func.count(s.c.record_id))
    .select_from(archive.outerjoin(s, and_(s.c.record_id == archive.c.id, s.c.epoch == bindparam("n"))))
    .group_by(archive.c.id)
    .order_by(archive.c.id)
)
_DROP_OTHER_EPOCHS = s.delete().where(s.c.epoch != bindparam("n"))
_DROP_EPOCH = s.delete().where(s.c.epoch == bindparam("n"))
_DROP_RECORD = s.delete().where(s.c.record_id == bindparam("rid"))


class ShareRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def sealed_for(self, epoch: int, officer: str, record_ids: Sequence[int]) -> dict[int, bytes]:
        """``officer``'s sealed shares of the named records in ``epoch`` (those there are)."""
        out: dict[int, bytes] = {}
        ids = list(record_ids)
        for i in range(0, len(ids), _CHUNK):
            stmt = select(s.c.record_id, s.c.sealed).where(
                s.c.epoch == epoch, s.c.officer == officer, s.c.record_id.in_(ids[i : i + _CHUNK])
            )
            out.update((int(row[0]), bytes(row[1])) for row in self._conn.execute(stmt))
        return out

    def officer_records(self, epoch: int, officer: str) -> list[tuple[int, int, str, bytes]]:
        """Record id, user id, certificate serial and sealed share of every record ``officer``
        holds a share of in ``epoch``, by record id."""
        return [
            (int(row[0]), int(row[1]), str(row[2]), bytes(row[3]))
            for row in self._conn.execute(_OFFICER_RECORDS, {"n": epoch, "officer": officer})
        ]

    def counts_per_record(self, epoch: int) -> list[tuple[int, int]]:
        """Each archive record (by id) with the number of its shares in ``epoch``."""
        return [(int(row[0]), int(row[1])) for row in self._conn.execute(_COUNTS, {"n": epoch})]

    def add_missing(self, rows: Sequence[tuple[int, int, str, int, bytes]]) -> None:
        """(record, epoch, officer, x, sealed) shares; one already there is kept as it is."""
        if not rows:
            return
        make = postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert
        stmt = make(s).on_conflict_do_nothing(index_elements=["record_id", "epoch", "officer"])
        self._conn.execute(
            stmt,
            [
                {"record_id": rid, "epoch": n, "officer": name, "x": x, "sealed": sealed}
                for rid, n, name, x, sealed in rows
            ],
        )

    def drop_other_epochs(self, epoch: int) -> None:
        self._conn.execute(_DROP_OTHER_EPOCHS, {"n": epoch})

    def drop_epoch(self, epoch: int) -> None:
        self._conn.execute(_DROP_EPOCH, {"n": epoch})

    def drop_record(self, record_id: int) -> None:
        self._conn.execute(_DROP_RECORD, {"rid": record_id})
