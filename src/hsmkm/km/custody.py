"""The officers' registry, and the first release's custody of the recovery token's PIN.

Today each archive record's own key is split among the officers (see ``archive`` and
``epochs``). A KM of the first release kept one recovery key on a recovery token whose PIN
was split K-of-N, each share sealed to one officer's key and bound to its officer and epoch;
those PIN shares serve once more, in ``archive migrate``, and are voided after it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.keys.base import PublicKey
from hsmkm.km import shamir
from hsmkm.store.repos.officers import OfficerStatus
from hsmkm.store.tx import Tx

__all__ = [
    "Officer",
    "OfficerStatus",
    "active_officers",
    "combine_pin",
    "epoch",
    "load_public",
    "officer_token_serials",
    "public_der",
    "quorum",
    "random_pin",
    "store_split",
]

PIN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
PIN_LENGTH = 32  # ~186 bits


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
    tx: Tx,
    officers: Sequence[tuple[str, str, PublicKey]],
    sealed: dict[str, bytes],
    epoch: int,
    quorum: int,
    now: datetime,
) -> None:
    """Register the officers (inside the caller's transaction); ``sealed`` is the first
    release's PIN shares, empty for a KM of today."""
    tx.officers.remove_active()
    for name, uri, pub in officers:
        tx.officers.register(name, uri, public_der(pub), sealed[name], epoch, now.isoformat())
    tx.meta.set("share_epoch", str(epoch))
    tx.meta.set("quorum", str(quorum))


def active_officers(tx: Tx) -> list[Officer]:
    return [Officer(r.name, r.uri, load_public(r.public_key), r.share_epoch, r.share) for r in tx.officers.active()]


def officer_token_serials(tx: Tx) -> list[str]:
    """The serials of the tokens the active officers' keys were made on (one person, one token)."""
    return tx.officers.active_token_serials()


def quorum(tx: Tx) -> int:
    value = tx.meta.get("quorum")
    return int(value) if value is not None else 0


def epoch(tx: Tx) -> int:
    value = tx.meta.get("share_epoch")
    return int(value) if value is not None else 0


def combine_pin(shares: Sequence[bytes]) -> str:
    """The PIN from K decoded shares."""
    try:
        return shamir.combine([shamir.decode_share(s) for s in shares]).decode()
    except UnicodeDecodeError:
        raise errors.SignatureInvalid("the shares do not rebuild a PIN") from None
