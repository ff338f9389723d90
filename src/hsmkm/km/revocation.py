"""Revoking users' certificates. Revoking is not deleting: the archive stays."""

from __future__ import annotations

from dataclasses import dataclass

from hsmkm import errors
from hsmkm.km import directory, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.store.repos.counters import Counter
from hsmkm.store.repos.users import UserStatus
from hsmkm.x509.crl import RevocationReason


@dataclass(frozen=True)
class Revoked:
    email: str
    serials: list[str]
    reason: RevocationReason
    at: str


def parse_reason(text: str | None) -> RevocationReason:
    if text is None:
        return RevocationReason.UNSPECIFIED
    for reason in RevocationReason:
        if reason.value.lower() == text.lower() or reason.name.lower() == text.lower():
            return reason
    names = ", ".join(r.value for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL)
    raise errors.BadInput(f"unknown revocation reason {text!r} (one of: {names})")


def revoke_user(km: KeyManager, email: str, reason: RevocationReason) -> Revoked:
    """Mark the user's current certificates revoked, with the reason and time, in one change."""
    if reason is RevocationReason.REMOVE_FROM_CRL:
        raise errors.BadInput("removeFromCRL is not a reason to revoke")
    now = km.clock()
    with km.db.read() as tx:
        user = users.find_user(tx, email)
    # Queued first, in a transaction of its own: whatever happens to the revocation, the
    # next drain makes the user's files match the database again.
    with km.db.write() as tx:
        directory.queue(tx, user.email, now.isoformat())
    if user.status is UserStatus.REVOKED and not _valid_current(km, user.id):
        # Run again after it completed (e.g. after a crash): nothing left to revoke.
        directory.drain_outbox(km.db, km.publisher)
        return Revoked(user.email, [], reason, now.isoformat())
    with km.change(AuditAction.USER_REVOKE, email=email, reason=reason.value) as ch:
        user = users.find_user(ch.tx, email)
        serials = [serial for serial, _ in ch.tx.certs.valid_current(user.id)]
        if not serials:
            raise errors.BadInput(f"{user.email} has no valid current certificates to revoke")
        # The revocation order (delta CRLs read from it): this change owns the values up to last.
        last = ch.tx.counters.draw(Counter.REVOKED_SEQ, len(serials))
        for i, serial in enumerate(serials, start=last - len(serials) + 1):
            ch.tx.certs.revoke(serial, now.isoformat(), reason.value, i)
        ch.tx.users.set_status(user.id, UserStatus.REVOKED)
        ch.details.update(email=user.email, serials=serials)
        # Before the commit: a revoked certificate is never left in the directory.
        directory.withdraw(km.publisher, user.email)
    directory.drain_outbox(km.db, km.publisher)
    return Revoked(user.email, serials, reason, now.isoformat())


def _valid_current(km: KeyManager, user_id: int) -> bool:
    with km.db.read() as tx:
        return bool(tx.certs.valid_current(user_id))
