"""Share epochs: which officers (with their Shamir indices) and which quorum a record's key is
split for. One epoch is active; an officer or quorum change opens a pending one, for which
new records are split too, so nothing enrolled during the change is lost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hsmkm import errors
from hsmkm.keys.base import PublicKey
from hsmkm.km import custody
from hsmkm.store.repos.epochs import EpochRow, EpochStatus
from hsmkm.store.tx import Tx

__all__ = [
    "Epoch",
    "EpochOfficer",
    "EpochStatus",
    "activate",
    "active",
    "create",
    "get",
    "record_attestation",
    "retire",
    "sharing",
    "sharing_numbers",
    "statement",
]


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


def _load(tx: Tx, row: EpochRow) -> Epoch:
    officers = tuple(EpochOfficer(n, x, _public(p)) for n, x, p in tx.epochs.officers(row.number))
    return Epoch(row.number, row.quorum, row.status, row.request_id, officers)


def get(tx: Tx, number: int) -> Epoch:
    row = tx.epochs.get(number)
    if row is None:
        raise errors.NotFound(f"no share epoch {number}")
    return _load(tx, row)


def active(tx: Tx) -> Epoch:
    row = tx.epochs.active()
    if row is None:
        raise errors.NotFound("the KM has no active share epoch (no recovery officers)")
    return _load(tx, row)


def sharing(tx: Tx) -> list[Epoch]:
    """The epochs a new record's key is split for: the active one and any pending ones."""
    return [_load(tx, r) for r in tx.epochs.sharing()]


def sharing_numbers(tx: Tx) -> tuple[int, ...]:
    return tx.epochs.sharing_numbers()


def create(
    tx: Tx,
    quorum: int,
    officers: Sequence[tuple[str, PublicKey]],
    status: EpochStatus,
    request_id: int | None = None,
) -> Epoch:
    """A new epoch; officers get indices 1..N in the order given (inside the caller's transaction)."""
    if not 1 <= quorum <= len(officers):
        raise errors.PolicyViolation(f"quorum {quorum} must be between 1 and the {len(officers)} officers")
    members = [(name, x, custody.public_der(pub)) for x, (name, pub) in enumerate(officers, start=1)]
    return get(tx, tx.epochs.create(quorum, status, request_id, members))


def activate(tx: Tx, number: int) -> None:
    """Make ``number`` the active epoch; every other epoch and its shares are gone."""
    tx.epochs.activate(number)
    tx.shares.drop_other_epochs(number)
    ep = get(tx, number)
    tx.meta.set("share_epoch", str(number))
    tx.meta.set("quorum", str(ep.quorum))


def retire(tx: Tx, number: int) -> None:
    """A pending epoch whose change will not happen: no more records are split for it."""
    tx.epochs.retire_pending(number)
    tx.shares.drop_epoch(number)


def statement(ep: Epoch) -> bytes:
    from hsmkm.km.officer_side import epoch_statement

    return epoch_statement(ep.number, ep.quorum, [(o.name, o.x, custody.public_der(o.public_key)) for o in ep.officers])


def record_attestation(tx: Tx, number: int, officer: str, signature: bytes) -> None:
    tx.epochs.attest(number, officer, signature)
