"""Answers kept for a client that asks again (its response was lost).

An answer is kept sealed under a key derived from the code (which the KM knows only as a
hash), in the transaction that records it. The same code within the replay window gets it
back; a code replaced by a newer one, or expired, gets nothing.
"""

from __future__ import annotations

import hmac
import os
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmkm.km import users
from hsmkm.protocol import normalize_code
from hsmkm.store.repos.enroll_responses import ResponseKind
from hsmkm.store.tx import Tx

# How long after its use a code still fetches its answer: long enough for a client to try
# again, short, since whoever learnt the code could open the kept answer meanwhile.
REPLAY_WINDOW = timedelta(hours=24)

_SUPERSEDED = "superseded:"


def _key(code: str, salt: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=salt, info=b"hsmkm-enroll-replay-v1").derive(normalize_code(code).encode())


def _aad(code_row: int, kind: ResponseKind) -> bytes:
    # The one-call enrollment's answers are bound to the code row alone (those kept stay readable).
    base = f"hsmkm-enroll-replay\x00{code_row}"
    return (base if kind is ResponseKind.ENROLL else f"{base}\x00{kind.value}").encode()


def keep(tx: Tx, code_row: int, kind: ResponseKind, code: str, answer: bytes, now: datetime) -> None:
    """Keep ``answer`` for the code row and kind, sealed under the code."""
    salt = os.urandom(16)
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(_key(code, salt)).encrypt(nonce, answer, _aad(code_row, kind))
    tx.enroll_responses.keep(code_row, now.isoformat(), salt, sealed, kind)


def purge(tx: Tx, now: datetime) -> None:
    """Drop kept answers whose replay window has passed (an index range, however many users)."""
    tx.enroll_responses.purge_before((now - REPLAY_WINDOW).isoformat())


def fetch(tx: Tx, user_id: int, code: str, kind: ResponseKind, now: datetime) -> bytes | None:
    """The answer kept of ``kind`` if ``code`` is the user's latest code, not replaced, not
    expired, and the answer was kept within the replay window."""
    row = tx.enroll_responses.for_latest_code(user_id, kind)
    if row is None or (row.used_at is not None and row.used_at.startswith(_SUPERSEDED)):
        return None
    if now > datetime.fromisoformat(row.expires_at) or now > datetime.fromisoformat(row.kept_at) + REPLAY_WINDOW:
        return None
    if not hmac.compare_digest(row.verifier, users.code_verifier(code)):
        return None
    try:
        return AESGCM(_key(code, row.salt)).decrypt(row.sealed[:12], row.sealed[12:], _aad(row.code_row, kind))
    except (InvalidTag, ValueError):
        return None
