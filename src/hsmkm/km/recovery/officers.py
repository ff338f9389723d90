"""Officer and quorum changes: an approved change carried out by redistribution (each
officer of the new set combines the sub-shares the approving officers sent it into its new
share of every record), the new share epoch made active and the officers table brought in
line."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hsmkm import errors
from hsmkm.keys.base import PrivateKey
from hsmkm.km import custody, epochs, officer_side, request_content
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.officer_side import NewOfficer
from hsmkm.km.recovery.approvals import verified_approvals
from hsmkm.km.recovery.claims import claim, finish, no_pause, release
from hsmkm.km.recovery.requests import (
    CHANGE_KINDS,
    Request,
    RequestKind,
    RequestStatus,
    check_expiry,
    destroy_request_key,
    load,
)
from hsmkm.store.tx import Tx


def complete_change(
    km: KeyManager,
    request_id: int,
    officer_key: Callable[[str], PrivateKey],
    after_claim: Callable[[], None] = no_pause,
) -> dict[str, Any]:
    """Carry out an approved officer or quorum change: each officer of the new set combines
    the sub-shares the approving officers sent it (``officer_key(name)`` gives its token key,
    on its own machine in a distributed setting) into its new share of every record."""
    with km.db.read() as tx:
        req = load(tx, request_id)
        if req.kind not in CHANGE_KINDS:
            raise errors.BadInput(f"request {req.id} is a {req.kind.value} request")
        content = request_content.build(tx, request_id, None)
    approvals = verified_approvals(km, req, content)
    check_expiry(req, content, km.clock())  # whatever the status says: a claim can be forged
    with km.db.read() as tx:
        old = epochs.get(tx, req.share_epoch)
        new = epochs.get(tx, int(req.params["epoch"]))
    if old.status is not epochs.EpochStatus.ACTIVE or new.status is not epochs.EpochStatus.PENDING:
        raise errors.PolicyViolation(f"request {req.id} is stale: the officers changed since it was opened")
    me = claim(km, req)
    try:
        after_claim()
        new_rows: list[tuple[int, str, int, bytes]] = []
        attestations: list[tuple[str, bytes]] = []
        for o in new.officers:
            key = officer_key(o.name)
            if custody.public_der(key.public_key()) != custody.public_der(o.public_key):
                raise errors.PolicyViolation(f"the token given for {o.name} does not hold {o.name}'s officer key")
            # each member of the new set attests it, so later approvals can check it was not altered
            attestations.append((o.name, officer_side.attest(key, epochs.statement(new))))
            received = []
            for a in approvals:
                with km.db.read() as tx:
                    sub = tx.recovery.reshare(req.id, a.officer, o.name)
                if sub is None:
                    raise errors.Tampered(f"the sub-shares from {a.officer} to {o.name} are missing")
                received.append((a.officer, a.x, sub))
            for rec, sealed in officer_side.combine_received(
                key, NewOfficer(o.name, o.x, o.public_key), new.number, req.id, content.canonical, received
            ):
                new_rows.append((rec.record_id, o.name, o.x, sealed))
        covered: dict[int, int] = {}
        for rid, *_ in new_rows:
            covered[rid] = covered.get(rid, 0) + 1
        with km.db.read() as tx:
            direct_counts = tx.shares.counts_per_record(new.number)
        for rid, direct in direct_counts:
            if direct < len(new.officers) and covered.get(rid, 0) < len(new.officers):
                raise errors.PolicyViolation(
                    f"archive record {rid} was not re-shared by every approving officer; approve request {req.id} again"
                )
        with km.change(AuditAction.POLICY_CHANGE, id=req.id, kind=req.kind.value, stage="complete") as ch:
            ch.tx.shares.add_missing([(rid, new.number, name, x, sealed) for rid, name, x, sealed in new_rows])
            for name, sig in attestations:
                epochs.record_attestation(ch.tx, new.number, name, sig)
            _activate_officers(ch.tx, req, new, km.clock())
            finish(ch.tx, req, me)
            ch.details.update(
                officers=[o.name for o in new.officers], quorum=new.quorum, new_epoch=new.number, records=len(covered)
            )
    except BaseException:
        release(km, req, me)
        raise
    destroy_request_key(km.session, req.key_label)
    return {"officers": [o.name for o in new.officers], "quorum": new.quorum}


def _activate_officers(tx: Tx, req: Request, new: epochs.Epoch, now: datetime) -> None:
    """The new epoch active, the old shares gone, the officers table and other pending changes
    brought in line (a change opened against the old set is cancelled)."""
    for other in tx.epochs.pending_requests(new.number):
        tx.recovery.transition(other, RequestStatus.OPEN, RequestStatus.CANCELLED)
    epochs.activate(tx, new.number)
    tx.officers.remove_all_but([o.name for o in new.officers])
    for o in new.officers:
        uri = req.params.get("uri") if o.name == req.params.get("name") else None
        tx.officers.activate(o.name, uri, custody.public_der(o.public_key), new.number, now.isoformat())
    if req.kind is RequestKind.OFFICER_ADD and "token_serial" in req.params:
        tx.officers.set_token(req.params["name"], req.params["token_serial"], req.params.get("token_label", ""))
