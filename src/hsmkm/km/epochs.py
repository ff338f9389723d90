"""Share epochs: which officers (with their Shamir indices) and which quorum a record's key is
split for. One epoch is active; an officer or quorum change opens a pending one, for which
new records are split too, so nothing enrolled during the change is lost."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from hsmkm import errors
from hsmkm.keys.base import PublicKey
from hsmkm.km import custody


class EpochStatus(str, Enum):
    ACTIVE = "active"
    PENDING = "pending"
    RETIRED = "retired"


@dataclass(frozen=True)
class EpochOfficer:
    name: str
    x: int
    public_key: PublicKey


@dataclass(frozen=True)
class Epoch:
    number: int
    quorum: int
    status: EpochStatus
    request_id: int | None
    officers: tuple[EpochOfficer, ...]

    def officer(self, name: str) -> EpochOfficer:
        for o in self.officers:
            if o.name == name:
                return o
        raise errors.PolicyViolation(f"{name} is not an officer of share epoch {self.number}")


_PUBLIC_KEYS: dict[bytes, PublicKey] = {}


def _public(der: bytes) -> PublicKey:
    """Parsed once per process: every enrollment seals to the same few officer keys."""
    key = _PUBLIC_KEYS.get(der)
    if key is None:
        key = _PUBLIC_KEYS[der] = custody.load_public(der)
    return key


def _load(conn: sqlite3.Connection, row: tuple[int, int, str, int | None]) -> Epoch:
    officers = tuple(
        EpochOfficer(str(n), int(x), _public(bytes(p)))
        for n, x, p in conn.execute(
            "SELECT officer, x, public_key FROM epoch_officers WHERE epoch = ? ORDER BY x", (row[0],)
        )
    )
    return Epoch(int(row[0]), int(row[1]), EpochStatus(row[2]), row[3], officers)


def get(conn: sqlite3.Connection, number: int) -> Epoch:
    row = conn.execute("SELECT epoch, quorum, status, request_id FROM share_epochs WHERE epoch = ?", (number,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no share epoch {number}")
    return _load(conn, row)


def active(conn: sqlite3.Connection) -> Epoch:
    row = conn.execute(
        "SELECT epoch, quorum, status, request_id FROM share_epochs WHERE status = ?", (EpochStatus.ACTIVE.value,)
    ).fetchone()
    if row is None:
        raise errors.NotFound("the KM has no active share epoch (no recovery officers)")
    return _load(conn, row)


def sharing(conn: sqlite3.Connection) -> list[Epoch]:
    """The epochs a new record's key is split for: the active one and any pending ones."""
    return [
        _load(conn, r)
        for r in conn.execute(
            "SELECT epoch, quorum, status, request_id FROM share_epochs WHERE status IN (?, ?) ORDER BY epoch",
            (EpochStatus.ACTIVE.value, EpochStatus.PENDING.value),
        )
    ]


def sharing_numbers(conn: sqlite3.Connection) -> tuple[int, ...]:
    return tuple(int(r[0]) for r in conn.execute(
        "SELECT epoch FROM share_epochs WHERE status IN (?, ?) ORDER BY epoch",
        (EpochStatus.ACTIVE.value, EpochStatus.PENDING.value),
    ))


def create(
    conn: sqlite3.Connection,
    quorum: int,
    officers: Sequence[tuple[str, PublicKey]],
    status: EpochStatus,
    request_id: int | None = None,
) -> Epoch:
    """A new epoch; officers get indices 1..N in the order given (inside the caller's transaction)."""
    if not 1 <= quorum <= len(officers):
        raise errors.PolicyViolation(f"quorum {quorum} must be between 1 and the {len(officers)} officers")
    number = int(conn.execute("SELECT COALESCE(MAX(epoch), 0) + 1 FROM share_epochs").fetchone()[0])
    conn.execute(
        "INSERT INTO share_epochs(epoch, quorum, status, request_id) VALUES (?, ?, ?, ?)",
        (number, quorum, status.value, request_id),
    )
    for x, (name, pub) in enumerate(officers, start=1):
        conn.execute(
            "INSERT INTO epoch_officers(epoch, officer, x, public_key) VALUES (?, ?, ?, ?)",
            (number, name, x, custody.public_der(pub)),
        )
    return get(conn, number)


def activate(conn: sqlite3.Connection, number: int) -> None:
    """Make ``number`` the active epoch; every other epoch and its shares are gone."""
    conn.execute("UPDATE share_epochs SET status = ? WHERE epoch != ?", (EpochStatus.RETIRED.value, number))
    conn.execute("UPDATE share_epochs SET status = ? WHERE epoch = ?", (EpochStatus.ACTIVE.value, number))
    conn.execute("DELETE FROM archive_shares WHERE epoch != ?", (number,))
    ep = get(conn, number)
    conn.execute("INSERT INTO meta(key, value) VALUES ('share_epoch', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                 (str(number),))
    conn.execute("INSERT INTO meta(key, value) VALUES ('quorum', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                 (str(ep.quorum),))


def retire(conn: sqlite3.Connection, number: int) -> None:
    """A pending epoch whose change will not happen: no more records are split for it."""
    conn.execute("UPDATE share_epochs SET status = ? WHERE epoch = ? AND status = ?",
                 (EpochStatus.RETIRED.value, number, EpochStatus.PENDING.value))
    conn.execute("DELETE FROM archive_shares WHERE epoch = ?", (number,))


def statement(ep: Epoch) -> bytes:
    from hsmkm.km.officer_side import epoch_statement

    return epoch_statement(ep.number, ep.quorum, [(o.name, o.x, custody.public_der(o.public_key)) for o in ep.officers])


def record_attestation(conn: sqlite3.Connection, number: int, officer: str, signature: bytes) -> None:
    conn.execute(
        "INSERT INTO epoch_attestations(epoch, officer, signature) VALUES (?, ?, ?) "
        "ON CONFLICT(epoch, officer) DO UPDATE SET signature = excluded.signature",
        (number, officer, signature),
    )
