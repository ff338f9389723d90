"""The officers' registry: each officer's token, public key, status, and (first release) the
sealed share of the recovery token's PIN."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from hsmkm.store.schema import officer_tokens, officers
from hsmkm.store.upsert import upsert

o = officers


class OfficerStatus(str, Enum):
    ACTIVE = "active"
    REMOVED = "removed"


@dataclass(frozen=True)
class OfficerRow:
    name: str
    uri: str
    public_key: bytes
    share: bytes  # the first release's sealed PIN share; empty for a KM of today
    share_epoch: int


_ACTIVE = (
    select(o.c.name, o.c.uri, o.c.public_key, o.c.share, o.c.share_epoch)
    .where(o.c.status == OfficerStatus.ACTIVE.value)
    .order_by(o.c.name)
)
_PIN_SHARE = select(o.c.share, o.c.share_epoch).where(o.c.name == bindparam("name"))
_REMOVE_ACTIVE = o.update().where(o.c.status == OfficerStatus.ACTIVE.value).values(status=OfficerStatus.REMOVED.value)
_VOID_PIN_SHARES = o.update().values(share=b"")
_ACTIVE_TOKEN_SERIALS = (
    select(officer_tokens.c.token_serial)
    .select_from(officer_tokens.join(o, o.c.name == officer_tokens.c.officer))
    .where(o.c.status == OfficerStatus.ACTIVE.value)
)


class OfficerRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def active(self) -> list[OfficerRow]:
        """The active officers, by name."""
        return [
            OfficerRow(str(r[0]), str(r[1]), bytes(r[2]), bytes(r[3]), int(r[4])) for r in self._conn.execute(_ACTIVE)
        ]

    def pin_share(self, name: str) -> tuple[bytes, int] | None:
        """The officer's sealed PIN share and its epoch, or None for no such officer."""
        row = self._conn.execute(_PIN_SHARE, {"name": name}).first()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def remove_active(self) -> None:
        """Every active officer marked removed (a new registration follows)."""
        self._conn.execute(_REMOVE_ACTIVE)

    def remove_all_but(self, names: Sequence[str]) -> None:
        self._conn.execute(o.update().where(o.c.name.not_in(list(names))).values(status=OfficerStatus.REMOVED.value))

    def register(self, name: str, uri: str, public_key: bytes, share: bytes, share_epoch: int, added_at: str) -> None:
        """The officer active with this token, key and share (its first registration's time kept)."""
        upsert(
            self._conn,
            o,
            ("name",),
            {
                "name": name,
                "uri": uri,
                "public_key": public_key,
                "share": share,
                "share_epoch": share_epoch,
                "status": OfficerStatus.ACTIVE.value,
                "added_at": added_at,
            },
        )

    def activate(self, name: str, uri: str | None, public_key: bytes, share_epoch: int, added_at: str) -> None:
        """The officer active in ``share_epoch`` with no PIN share; ``uri`` None keeps the token
        it had (a new officer without one is registered with an empty token)."""
        make = postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert
        stmt = make(o).values(
            name=name,
            uri=uri or "",
            public_key=public_key,
            share=b"",
            share_epoch=share_epoch,
            status=OfficerStatus.ACTIVE.value,
            added_at=added_at,
        )
        self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "uri": func.coalesce(uri, o.c.uri),
                    "public_key": stmt.excluded.public_key,
                    "share": stmt.excluded.share,
                    "share_epoch": stmt.excluded.share_epoch,
                    "status": stmt.excluded.status,
                },
            )
        )

    def void_pin_shares(self) -> None:
        """Every officer's PIN share emptied (the key they guarded is gone)."""
        self._conn.execute(_VOID_PIN_SHARES)

    def set_token(self, officer: str, serial: str, label: str) -> None:
        upsert(
            self._conn, officer_tokens, ("officer",), {"officer": officer, "token_serial": serial, "token_label": label}
        )

    def active_token_serials(self) -> list[str]:
        """The token serials the active officers' keys were made on."""
        return [str(r[0]) for r in self._conn.execute(_ACTIVE_TOKEN_SERIALS)]
