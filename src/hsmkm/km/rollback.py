"""Accepting a rollback the token's anchor found (after restoring a database backup).

Every state change is refused while the database lacks the anchored entry. When that is an
operator's own doing — km.db restored from a backup after losing the disk — the holder of the
KM PIN accepts it: the log must be intact on its own, the acceptance is an audit entry naming
what the anchor recorded, the CRL number continues above every number ever drawn, and the
anchor moves to the new head. (The PIN holder could do as much by hand; this way it is on the
record, and checkpoints held elsewhere still show what was lost.)
"""

from __future__ import annotations

from dataclasses import dataclass

from hsmkm import errors
from hsmkm.km.audit import AuditAction, AuditLog, crl_number_of
from hsmkm.km.manager import KeyManager


@dataclass(frozen=True)
class AcceptedRollback:
    log_ended_at: int
    anchored: int
    entry: int
    crl_number: int


def accept_rollback(km: KeyManager) -> AcceptedRollback:
    anchor = km.anchor.read()
    if anchor is None:
        raise errors.BadInput("the token holds no audit anchor: there is no rollback to accept")
    own = km.audit().verify()
    if not own.ok:
        raise errors.AuditChainBroken(
            f"audit chain broken at entry {own.first_bad}: {own.problem}; only a rollback onto an intact log "
            "can be accepted"
        )
    if km.audit().verify([anchor.witness()]).ok:
        raise errors.BadInput("the log holds the token's anchor: there is no rollback to accept")
    with km.db.write() as tx:
        # Not km.transaction(): its check against the anchor is what refuses every change now.
        log = AuditLog(tx, km.audit_key.hmac_sha256, km.clock)
        head = log.check()
        ended = head.seq if head is not None else 0
        crl_number = max(crl_number_of(tx), anchor.crl_number)
        tx.meta.set("crl_number", str(crl_number))
        log.append(
            km.actor,
            AuditAction.AUDIT_ROLLBACK_ACCEPTED,
            {
                "log_ended_at": ended,
                "anchored_entry": anchor.seq,
                "anchored_hash": anchor.digest.hex(),
                "anchored_crl_number": anchor.crl_number,
                "crl_number": crl_number,
            },
        )
    if log.appended is None:
        raise errors.AuditChainBroken("the acceptance was not recorded")
    km.anchor.replace(log.appended, crl_number)
    return AcceptedRollback(ended, anchor.seq, log.appended.seq, crl_number)
