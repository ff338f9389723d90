"""Recovered keys held for re-enrollment: encrypted under a key derived from the one-time
recovery code until the user enrolls with it, then re-sealed for the client and deleted."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmkm import errors
from hsmkm.keys.base import PrivateKey
from hsmkm.protocol import SealedKey, code_key, seal_key
from hsmkm.store.tx import Tx


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


def hold_for_code(tx: Tx, code_row: int, code: str, keys: list[RecoveredKey]) -> None:
    """Keep the recovered keys encrypted under a key derived from the one-time code."""
    hold = _hold_key_cipher(code, code_row)
    held = []
    for k in keys:
        pkcs8 = k.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        nonce = os.urandom(12)
        held.append((k.record_id, nonce + hold.encrypt(nonce, pkcs8, k.cert_serial.encode())))
    tx.recovery.hold(code_row, held)


def take_recovered(tx: Tx, code_row: int, code: str) -> list[tuple[PrivateKey, bytes]]:
    """At re-enrollment with a recovery code: the held keys with their certificates' DER, no
    longer held."""
    hold = _hold_key_cipher(code, code_row)
    out = []
    for h in tx.recovery.held(code_row):
        if h.cert_serial is None or h.cert_der is None:
            raise errors.Tampered(f"a key held for re-enrollment names archive record {h.archive_id}, which is gone")
        pkcs8 = hold.decrypt(h.sealed[:12], h.sealed[12:], h.cert_serial.encode())
        key = serialization.load_der_private_key(pkcs8, None)
        out.append((key, h.cert_der))
    tx.recovery.drop_held(code_row)
    return out  # type: ignore[return-value]


def release_recovered(tx: Tx, code_row: int, code: str, transport_key: bytes) -> list[SealedKey]:
    """At re-enrollment with a recovery code: the held keys, re-sealed for the client."""
    return [seal_key(transport_key, key, cert_der) for key, cert_der in take_recovered(tx, code_row, code)]
