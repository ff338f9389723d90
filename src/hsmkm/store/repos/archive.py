"""Archive records (each encryption key, sealed) and the per-record officer shares made with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, func, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import archive, archive_shares


@dataclass(frozen=True)
class ArchiveRow:
    id: int
    user_id: int
    cert_serial: str
    algorithm: str
    created_at: str
    format_version: int
    master_label: str
    sealed: bytes


class ResealRow(NamedTuple):
    """What re-sealing a record reads: its id, the fields of its AAD and its sealed bytes
    (a rotation reads thousands: the driver's tuple as it is, no per-field conversion)."""

    id: int
    user_id: int
    cert_serial: str
    format_version: int
    sealed: bytes


@dataclass(frozen=True)
class NewRecord:
    user_id: int
    cert_serial: str
    algorithm: str
    created_at: str
    format_version: int
    master_label: str
    sealed: bytes


@dataclass(frozen=True)
class NewShare:
    epoch: int
    officer: str
    x: int
    sealed: bytes


_COLUMNS = (
    archive.c.id,
    archive.c.user_id,
    archive.c.cert_serial,
    archive.c.algorithm,
    archive.c.created_at,
    archive.c.format_version,
    archive.c.master_label,
    archive.c.sealed,
)
_ADD = Prepared(
    archive.insert().returning(archive.c.id),
    column_keys=("user_id", "cert_serial", "algorithm", "created_at", "format_version", "master_label", "sealed"),
)
_ADD_SHARES = Prepared(archive_shares.insert(), column_keys=("record_id", "epoch", "officer", "x", "sealed"))
_FOR_USER = select(*_COLUMNS).where(archive.c.user_id == bindparam("uid")).order_by(archive.c.id)
_BY_ID = select(*_COLUMNS).where(archive.c.id == bindparam("rid"))
_UNDER = Prepared(
    select(archive.c.id, archive.c.user_id, archive.c.cert_serial, archive.c.format_version, archive.c.sealed)
    .where(archive.c.master_label == bindparam("label"))
    .order_by(archive.c.id)
    .limit(bindparam("n"))
)
_IDS_IN_FORMAT = (
    select(archive.c.id).where(archive.c.format_version == bindparam("v")).order_by(archive.c.id).limit(bindparam("n"))
)
_REFORMAT = (
    archive.update()
    .where(archive.c.id == bindparam("rid"), archive.c.format_version == bindparam("old"))
    .values(format_version=bindparam("new"), master_label=bindparam("label"), sealed=bindparam("s"))
    .returning(archive.c.id)
)
_RESEAL = Prepared(
    archive.update()
    .where(archive.c.id == bindparam("rid"), archive.c.master_label == bindparam("old"))
    .values(sealed=bindparam("new_sealed"), master_label=bindparam("new"))
)


def _row(t: Any) -> ArchiveRow:  # a Row of _COLUMNS
    return ArchiveRow(int(t[0]), int(t[1]), str(t[2]), str(t[3]), str(t[4]), int(t[5]), str(t[6]), bytes(t[7]))


class ArchiveRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, record: NewRecord, shares: Sequence[NewShare]) -> int:
        """Insert a record and its shares; returns the record's id."""
        rid = int(
            _ADD.scalar(
                self._conn,
                {
                    "user_id": record.user_id,
                    "cert_serial": record.cert_serial,
                    "algorithm": record.algorithm,
                    "created_at": record.created_at,
                    "format_version": record.format_version,
                    "master_label": record.master_label,
                    "sealed": record.sealed,
                },
            )
        )
        self.add_shares(rid, shares)
        return rid

    def add_shares(self, record_id: int, shares: Sequence[NewShare]) -> None:
        if shares:
            _ADD_SHARES.executemany(
                self._conn,
                [
                    {"record_id": record_id, "epoch": s.epoch, "officer": s.officer, "x": s.x, "sealed": s.sealed}
                    for s in shares
                ],
            )

    def for_user(self, user_id: int) -> list[ArchiveRow]:
        return [_row(r) for r in self._conn.execute(_FOR_USER, {"uid": user_id})]

    def by_id(self, record_id: int) -> ArchiveRow | None:
        r = self._conn.execute(_BY_ID, {"rid": record_id}).first()
        return None if r is None else _row(r)

    def under_label(self, label: str, limit: int) -> list[ResealRow]:
        """The first ``limit`` records sealed under the master key ``label``, by id."""
        return [ResealRow._make(r) for r in _UNDER.all(self._conn, {"label": label, "n": limit})]

    def reseal(self, updates: Sequence[tuple[int, str, str, bytes]]) -> None:
        """(id, old label, new label, sealed): each record still under its old label takes the
        new sealing (one batched statement)."""
        if updates:
            _RESEAL.executemany(
                self._conn,
                [{"rid": rid, "old": old, "new": new, "new_sealed": sealed} for rid, old, new, sealed in updates],
            )

    def ids_in_format(self, format_version: int, limit: int) -> list[int]:
        """The first ``limit`` records in ``format_version``, by id."""
        return [int(r[0]) for r in self._conn.execute(_IDS_IN_FORMAT, {"v": format_version, "n": limit})]

    def reformat(self, record_id: int, old: int, new: int, master_label: str, sealed: bytes) -> bool:
        """The record re-sealed into format ``new`` if it is in format ``old`` now (one
        conditional UPDATE); whether it was."""
        row = self._conn.execute(
            _REFORMAT, {"rid": record_id, "old": old, "new": new, "label": master_label, "s": sealed}
        ).first()
        return row is not None

    def count_shares(self) -> int:
        return int(self._conn.execute(select(func.count()).select_from(archive_shares)).scalar_one())

    def labels(self) -> list[str]:
        return [str(r[0]) for r in self._conn.execute(select(archive.c.master_label).distinct())]

    def count(
        self, user_id: int | None = None, format_version: int | None = None, labels: Sequence[str] | None = None
    ) -> int:
        stmt = select(func.count()).select_from(archive)
        if user_id is not None:
            stmt = stmt.where(archive.c.user_id == user_id)
        if format_version is not None:
            stmt = stmt.where(archive.c.format_version == format_version)
        if labels is not None:
            stmt = stmt.where(archive.c.master_label.in_(labels))
        return int(self._conn.execute(stmt).scalar_one())
