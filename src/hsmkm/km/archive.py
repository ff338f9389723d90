"""The key archive: every encryption key the KM makes, wrapped twice (custody rule 3).

Inner, recovery layer: the PKCS#8 under a fresh AES-256-GCM key, that key RSA-OAEP-SHA256
wrapped to the recovery public key (whose private half is on the recovery token).
Outer, at-rest layer: the inner blob AES-256-GCM encrypted on the KM token under the archive
master key. Neither key alone opens a record; the plaintext key exists only in memory.
"""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.keys.pkcs11 import TokenSecretKey
from hsmkm.km import custody, sealing

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ArchiveRecord:
    id: int
    user_id: int
    cert_serial: str
    algorithm: str
    created_at: str
    format_version: int
    master_label: str
    sealed: bytes


def record_aad(user_id: int, cert_serial: str, version: int) -> bytes:
    return f"hsmkm-archive\x00v{version}\x00{user_id}\x00{cert_serial}".encode()


def recovery_public_key(conn: sqlite3.Connection) -> PublicKey:
    row = conn.execute("SELECT value FROM meta WHERE key = 'recovery_public_key'").fetchone()
    if row is None:
        raise errors.NotFound("the KM has no recovery key")
    return custody.load_public(base64.b64decode(row[0]))


@dataclass(frozen=True)
class SealedRecord:
    """An archive record sealed and ready to store."""

    user_id: int
    cert_serial: str
    master_label: str
    sealed: bytes


def seal_record(
    master: TokenSecretKey, recovery_public: PublicKey, user_id: int, cert_serial: str, key: PrivateKey
) -> SealedRecord:
    """Both layers around ``key``: to the recovery key, then under the master key on the token."""
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    aad = record_aad(user_id, cert_serial, FORMAT_VERSION)
    inner = sealing.seal(recovery_public, pkcs8, aad)
    del pkcs8
    return SealedRecord(user_id, cert_serial, master.label, master.encrypt_gcm(inner, aad))


def store_record(conn: sqlite3.Connection, record: SealedRecord, algorithm: str, now: datetime) -> int:
    """Insert a sealed record (inside the caller's transaction); returns its id."""
    cur = conn.execute(
        "INSERT INTO archive(user_id, cert_serial, algorithm, created_at, format_version, master_label, sealed) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (record.user_id, record.cert_serial, algorithm, now.isoformat(), FORMAT_VERSION, record.master_label, record.sealed),
    )
    return int(cur.lastrowid or 0)


def _record(r: tuple[Any, ...]) -> ArchiveRecord:
    return ArchiveRecord(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), str(r[6]), bytes(r[7]))


def records_for_user(conn: sqlite3.Connection, user_id: int) -> list[ArchiveRecord]:
    return [
        _record(r)
        for r in conn.execute(
            "SELECT id, user_id, cert_serial, algorithm, created_at, format_version, master_label, sealed "
            "FROM archive WHERE user_id = ? ORDER BY id",
            (user_id,),
        )
    ]


def records_by_id(conn: sqlite3.Connection, ids: list[int]) -> list[ArchiveRecord]:
    out = []
    for rid in ids:
        r = conn.execute(
            "SELECT id, user_id, cert_serial, algorithm, created_at, format_version, master_label, sealed "
            "FROM archive WHERE id = ?",
            (rid,),
        ).fetchone()
        if r is None:
            raise errors.NotFound(f"archive record {rid} is missing")
        out.append(_record(r))
    return out


def open_outer(record: ArchiveRecord, master: TokenSecretKey) -> bytes:
    """The recovery-layer ciphertext (still sealed to the recovery key)."""
    return master.decrypt_gcm(record.sealed, record_aad(record.user_id, record.cert_serial, record.format_version))


def open_inner(record: ArchiveRecord, inner: bytes, recovery_key: PrivateKey) -> PrivateKey:
    """The private key, with the recovery private key (on the recovery token)."""
    pkcs8 = sealing.unseal(recovery_key, inner, record_aad(record.user_id, record.cert_serial, record.format_version))
    key = serialization.load_der_private_key(pkcs8, password=None)
    return key  # type: ignore[return-value]
