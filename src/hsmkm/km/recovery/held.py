"""Recovered keys held for re-enrollment: encrypted under a key derived from the one-time
recovery code until the user enrolls with it, then re-sealed for the client and deleted."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmkm.keys.base import PrivateKey
from hsmkm.protocol import SealedKey, code_key, seal_key


@dataclass(frozen=True)
class RecoveredKey:
    record_id: int
    cert_serial: str
    key: PrivateKey
    cert_der: bytes


def _code_hold_key(code: str, code_row: int) -> bytes:
    return code_key(code, f"hsmkm-recovered-{code_row}".encode())


def _hold_key_cipher(code: str, code_row: int) -> AESGCM:
    return AESGCM(_code_hold_key(code, code_row))


def hold_for_code(conn: sqlite3.Connection, code_row: int, code: str, keys: list[RecoveredKey]) -> None:
    """Keep the recovered keys encrypted under a key derived from the one-time code."""
    hold = _hold_key_cipher(code, code_row)
    for k in keys:
        pkcs8 = k.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        nonce = os.urandom(12)
        conn.execute(
            "INSERT INTO recovered(code_row, archive_id, sealed) VALUES (?, ?, ?)",
            (code_row, k.record_id, nonce + hold.encrypt(nonce, pkcs8, k.cert_serial.encode())),
        )


def release_recovered(conn: sqlite3.Connection, code_row: int, code: str, transport_key: bytes) -> list[SealedKey]:
    """At re-enrollment with a recovery code: the held keys, re-sealed for the client."""
    hold = _hold_key_cipher(code, code_row)
    out = []
    for archive_id, sealed in conn.execute(
        "SELECT archive_id, sealed FROM recovered WHERE code_row = ? ORDER BY archive_id", (code_row,)
    ).fetchall():
        serial, cert_der = conn.execute(
            "SELECT a.cert_serial, c.der FROM archive a JOIN certificates c ON c.serial = a.cert_serial WHERE a.id = ?",
            (archive_id,),
        ).fetchone()
        pkcs8 = hold.decrypt(bytes(sealed)[:12], bytes(sealed)[12:], str(serial).encode())
        key = serialization.load_der_private_key(pkcs8, None)
        out.append(seal_key(transport_key, key, bytes(cert_der)))  # type: ignore[arg-type]
    conn.execute("DELETE FROM recovered WHERE code_row = ?", (code_row,))
    return out

