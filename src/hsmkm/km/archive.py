"""The key archive: every encryption key the KM makes, wrapped twice (custody rule 3).

Inner, recovery layer (format 2): the PKCS#8 under a fresh AES-256-GCM key R of its own; R
is split K-of-N (Shamir) for the officers of each sharing epoch, each share sealed to one
officer's token public key under a context naming the record, epoch, officer and index
(rows of ``archive_shares``). R and the PKCS#8 are dropped as soon as they are sealed.
Format 1 (the first release) had R RSA-OAEP-wrapped to one recovery key on a recovery
token; ``archive migrate`` moves such records to format 2.
Outer, at-rest layer: the inner blob AES-256-GCM encrypted on the KM token under the archive
master key. Neither layer alone opens a record; the plaintext key exists only in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmkm import errors
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.token import SecretKey
from hsmkm.km import sealing, shamir
from hsmkm.km.epochs import Epoch
from hsmkm.km.officer_side import RecordIdentity, share_context
from hsmkm.store.repos.archive import ArchiveRow, NewRecord, NewShare
from hsmkm.store.tx import Tx

FORMAT_VERSION = 2
FORMAT_V1 = 1


# One archive record as the store keeps it (the sealed blob and what it is bound to).
ArchiveRecord = ArchiveRow


def record_aad(user_id: int, cert_serial: str, version: int) -> bytes:
    return f"hsmkm-archive\x00v{version}\x00{user_id}\x00{cert_serial}".encode()


@dataclass(frozen=True)
class SealedShare:
    epoch: int
    officer: str
    x: int
    sealed: bytes


@dataclass(frozen=True)
class SealedRecord:
    """An archive record sealed and ready to store, with its sealed shares."""

    user_id: int
    cert_serial: str
    master_label: str
    sealed: bytes
    shares: tuple[SealedShare, ...]
    epochs: tuple[int, ...]


def split_and_seal_key(record_key: bytes, identity: RecordIdentity, epochs: list[Epoch]) -> tuple[SealedShare, ...]:
    """``record_key`` split K-of-N for each epoch, each share sealed to its officer.

    One ephemeral EC key serves every officer of the record: each share's context names the
    record, epoch, officer and index, and the key derivation covers it."""
    out = []
    eph = sealing.new_ephemeral(ec.SECP256R1())
    for ep in epochs:
        shares = shamir.split_at(record_key, ep.quorum, [o.x for o in ep.officers])
        for o, share in zip(ep.officers, shares, strict=True):
            ctx = share_context(identity, ep.number, o.name, o.x)
            out.append(
                SealedShare(ep.number, o.name, o.x, sealing.seal(o.public_key, shamir.encode_share(share), ctx, eph))
            )
    return tuple(out)


def seal_inner(record_key: bytes, pkcs8: bytes, user_id: int, cert_serial: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(record_key).encrypt(nonce, pkcs8, record_aad(user_id, cert_serial, FORMAT_VERSION))


def seal_record(
    master: SecretKey, epochs: list[Epoch], user_id: int, cert_serial: str, key: PrivateKey
) -> SealedRecord:
    """Both layers around ``key``: under a fresh record key split among the officers, then
    under the master key on the token."""
    if not epochs:
        raise errors.NotFound("the KM has no recovery officers to split archive keys for")
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    record_key = os.urandom(32)
    inner = seal_inner(record_key, pkcs8, user_id, cert_serial)
    del pkcs8
    # the record id is not known before the insert; the shares are bound to user and serial
    shares = split_and_seal_key(record_key, RecordIdentity(0, user_id, cert_serial), epochs)
    del record_key
    aad = record_aad(user_id, cert_serial, FORMAT_VERSION)
    return SealedRecord(
        user_id, cert_serial, master.label, master.encrypt_gcm(inner, aad), shares, tuple(e.number for e in epochs)
    )


def store_shares(tx: Tx, record_id: int, shares: tuple[SealedShare, ...]) -> None:
    tx.archive.add_shares(record_id, [NewShare(s.epoch, s.officer, s.x, s.sealed) for s in shares])


def store_record(tx: Tx, record: SealedRecord, algorithm: str, now: datetime) -> int:
    """Insert a sealed record and its shares (inside the caller's transaction); returns its id."""
    return tx.archive.add(
        NewRecord(
            record.user_id,
            record.cert_serial,
            algorithm,
            now.isoformat(),
            FORMAT_VERSION,
            record.master_label,
            record.sealed,
        ),
        [NewShare(s.epoch, s.officer, s.x, s.sealed) for s in record.shares],
    )


def records_for_user(tx: Tx, user_id: int) -> list[ArchiveRecord]:
    return [r for r in tx.archive.for_user(user_id)]


def records_by_id(tx: Tx, ids: list[int]) -> list[ArchiveRecord]:
    out = []
    for rid in ids:
        r = tx.archive.by_id(rid)
        if r is None:
            raise errors.NotFound(f"archive record {rid} is missing")
        out.append(r)
    return out


def count_for_user(tx: Tx, user_id: int) -> int:
    """How many keys of the user the archive holds."""
    return tx.archive.count(user_id=user_id)


def identity(record: ArchiveRecord) -> RecordIdentity:
    return RecordIdentity(record.id, record.user_id, record.cert_serial)


def open_outer(record: ArchiveRecord, master: SecretKey) -> bytes:
    """The recovery-layer ciphertext; a record altered in the database is a tamper error."""
    aad = record_aad(record.user_id, record.cert_serial, record.format_version)
    try:
        return master.decrypt_gcm(record.sealed, aad)
    except errors.MalformedInput:
        raise errors.Tampered(f"archive record {record.id} was altered in the database (truncated)") from None
    except errors.TokenError:
        # SoftHSM2 answers a failed GCM tag with CKR_GENERAL_ERROR: tell tampering from a
        # token failure by a round trip under the same key.
        probe = b"hsmkm-probe"
        if master.decrypt_gcm(master.encrypt_gcm(probe, aad), aad) != probe:
            raise
        raise errors.Tampered(
            f"archive record {record.id} was altered in the database (its at-rest layer does not authenticate)"
        ) from None


def _load_key(pkcs8: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(pkcs8, password=None)
    return key  # type: ignore[return-value]


def open_inner(record: ArchiveRecord, inner: bytes, record_key: bytes) -> PrivateKey:
    """The private key of a format-2 record, with its record key (rebuilt from K shares)."""
    try:
        nonce, ct = inner[:12], inner[12:]
        pkcs8 = AESGCM(record_key).decrypt(
            nonce, ct, record_aad(record.user_id, record.cert_serial, record.format_version)
        )
    except (InvalidTag, ValueError):
        raise errors.Tampered(
            f"archive record {record.id} does not open with the key its shares rebuild (altered or moved)"
        ) from None
    return _load_key(pkcs8)


def open_inner_v1(record: ArchiveRecord, inner: bytes, recovery_key: PrivateKey) -> bytes:
    """The PKCS#8 of a format-1 record, with the recovery private key (on the recovery token)."""
    return sealing.unseal(recovery_key, inner, record_aad(record.user_id, record.cert_serial, record.format_version))
