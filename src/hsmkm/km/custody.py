"""The officers' registry, and the first release's custody of the recovery token's PIN.

Today each archive record's own key is split among the officers (see ``archive`` and
``epochs``). A KM of the first release kept one recovery key on a recovery token whose PIN
was split K-of-N, each share sealed to one officer's key and bound to its officer and epoch;
those PIN shares serve once more, in ``archive migrate``, and are voided after it.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.keys.base import PublicKey
from hsmkm.km import shamir

PIN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
PIN_LENGTH = 32  # ~186 bits


class OfficerStatus:
    ACTIVE = "active"
    REMOVED = "removed"


def random_pin(length: int = PIN_LENGTH) -> str:
    return "".join(secrets.choice(PIN_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class Officer:
    name: str
    uri: str
    public_key: PublicKey
    epoch: int
    sealed_share: bytes


def public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(der: bytes) -> PublicKey:
    key = serialization.load_der_public_key(der)
    return key  # type: ignore[return-value]


def store_split(
    conn: sqlite3.Connection,
    officers: Sequence[tuple[str, str, PublicKey]],
    sealed: dict[str, bytes],
    epoch: int,
    quorum: int,
    now: datetime,
) -> None:
    """Register the officers (inside the caller's transaction); ``sealed`` is the first
    release's PIN shares, empty for a KM of today."""
    conn.execute("UPDATE officers SET status = ? WHERE status = ?", (OfficerStatus.REMOVED, OfficerStatus.ACTIVE))
    for name, uri, pub in officers:
        conn.execute(
            "INSERT INTO officers(name, uri, public_key, share, share_epoch, status, added_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET uri = excluded.uri, "
            "public_key = excluded.public_key, share = excluded.share, "
            "share_epoch = excluded.share_epoch, status = excluded.status",
            (name, uri, public_der(pub), sealed[name], epoch, OfficerStatus.ACTIVE, now.isoformat()),
        )
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('share_epoch', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(epoch),),
    )
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('quorum', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(quorum),),
    )


def active_officers(conn: sqlite3.Connection) -> list[Officer]:
    return [
        Officer(r[0], r[1], load_public(bytes(r[2])), int(r[4]), bytes(r[3]))
        for r in conn.execute(
            "SELECT name, uri, public_key, share, share_epoch FROM officers WHERE status = ? ORDER BY name",
            (OfficerStatus.ACTIVE,),
        )
    ]


def quorum(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'quorum'").fetchone()
    return int(row[0]) if row else 0


def epoch(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'share_epoch'").fetchone()
    return int(row[0]) if row else 0


def combine_pin(shares: Sequence[bytes]) -> str:
    """The PIN from K decoded shares."""
    try:
        return shamir.combine([shamir.decode_share(s) for s in shares]).decode()
    except UnicodeDecodeError:
        raise errors.SignatureInvalid("the shares do not rebuild a PIN") from None
