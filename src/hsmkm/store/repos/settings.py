"""Per-user settings over the KM-wide defaults (names of a key algorithm and a client profile)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select

from hsmkm.store.lean import Prepared
from hsmkm.store.schema import user_settings
from hsmkm.store.upsert import upsert


@dataclass(frozen=True)
class SettingsRow:
    key_alg: str | None
    client: str | None


_GET = Prepared(
    select(user_settings.c.key_alg, user_settings.c.client).where(user_settings.c.user_id == bindparam("uid"))
)


class SettingsRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, user_id: int) -> SettingsRow | None:
        row = _GET.first(self._conn, {"uid": user_id})
        return None if row is None else SettingsRow(row[0], row[1])

    def put(self, user_id: int, row: SettingsRow) -> None:
        upsert(
            self._conn, user_settings, ("user_id",), {"user_id": user_id, "key_alg": row.key_alg, "client": row.client}
        )
