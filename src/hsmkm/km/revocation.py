"""Revoking users' certificates. Revoking is not deleting: the archive stays."""

from __future__ import annotations

from dataclasses import dataclass

from hsmkm import errors
from hsmkm.km import directory, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
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
    user = users.find_user(km.db.conn, email)
    # Queued first, in a transaction of its own: whatever happens to the revocation, the
    # next drain makes the user's files match the database again.
    with km.db.transaction() as conn:
        directory.queue(conn, user.email, now.isoformat())
    if user.status is users.UserStatus.REVOKED and not _valid_current(km, user.id):
        # Run again after it completed (e.g. after a crash): nothing left to revoke.
        directory.drain_outbox(km.db.conn, km.publisher)
        return Revoked(user.email, [], reason, now.isoformat())
    with km.change(AuditAction.USER_REVOKE, email=email, reason=reason.value) as ch:
        user = users.find_user(ch.conn, email)
        rows = ch.conn.execute(
            "SELECT serial FROM certificates WHERE user_id = ? AND current = 1 AND status = 'valid'",
            (user.id,),
        ).fetchall()
        if not rows:
            raise errors.BadInput(f"{user.email} has no valid current certificates to revoke")
        seq = int(ch.conn.execute("SELECT COALESCE(MAX(revoked_seq), 0) FROM certificates").fetchone()[0])
        serials = [r[0] for r in rows]
        for i, serial in enumerate(serials, start=1):
            ch.conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?, reason = ?, revoked_seq = ? "
                "WHERE serial = ?",
                (now.isoformat(), reason.value, seq + i, serial),
            )
        ch.conn.execute("UPDATE users SET status = ? WHERE id = ?", (users.UserStatus.REVOKED.value, user.id))
        ch.details.update(email=user.email, serials=serials)
        # Before the commit: a revoked certificate is never left in the directory.
        directory.withdraw(km.publisher, user.email)
    directory.drain_outbox(km.db.conn, km.publisher)
    return Revoked(user.email, serials, reason, now.isoformat())


def _valid_current(km: KeyManager, user_id: int) -> bool:
    return km.db.conn.execute(
        "SELECT 1 FROM certificates WHERE user_id = ? AND current = 1 AND status = 'valid'", (user_id,)
    ).fetchone() is not None
