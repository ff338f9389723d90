"""Approvals: an officer's approval made on their own token (a recovery's shares unsealed to
the request's key, a first-release PIN share, or a change's re-shares), and the check at
completion that K approvals cover the request's content as rebuilt from the rows."""

from __future__ import annotations

from dataclasses import dataclass

from hsmkm import errors
from hsmkm.keys.base import PrivateKey
from hsmkm.km import custody, epochs, officer_side, request_content
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.officer_side import NewOfficer, RecordIdentity
from hsmkm.km.recovery.requests import (
    Request,
    RequestKind,
    RequestStatus,
    check_open,
    load,
)
from hsmkm.km.request_content import Content
from hsmkm.store.errors import Conflict
from hsmkm.store.tx import Tx


def officer_set_chain(tx: Tx) -> list[officer_side.EpochRecord]:
    """Every share epoch that was ever active, with its members' attestations and the change
    (content and approval signatures, rebuilt from the rows) that made it."""
    out = []
    for h in tx.epochs.history():
        number, rid = h.epoch.number, h.epoch.request_id
        if rid is not None and h.request_status is not RequestStatus.COMPLETED:
            continue  # a change that never happened
        officers = tuple(tx.epochs.officers(number))
        attestations = tx.epochs.attestations(number)
        made_by = None
        if rid is not None:
            base = load(tx, rid).share_epoch
            content = request_content.build(tx, rid, None).canonical
            made_by = (base, content, tuple(tx.recovery.signatures(rid)))
        out.append(officer_side.EpochRecord(number, h.epoch.quorum, officers, attestations, made_by))
    return out


def _check_officer_set(
    tx: Tx, officer_name: str, officer_key: PrivateKey, active: epochs.Epoch, trust_officer_set: bool
) -> bytes | None:
    """The officer's side checks the officer set it is about to work with (an attestation of
    its own, then approved changes only); returns a new attestation when the officer, having
    none yet, chose to trust the set shown to it."""
    chain = officer_set_chain(tx)
    my_der = custody.public_der(officer_key.public_key())
    mine = [
        r
        for r in chain
        if officer_name in r.attestations and (officer_name, my_der) in {(n, d) for n, _, d in r.officers}
    ]
    if mine:
        officer_side.verify_officer_set(
            officer_name, my_der, [r for r in chain if r.number >= mine[-1].number], active.number
        )
        return None
    if not trust_officer_set:
        raise errors.PolicyViolation(
            f"{officer_name} has not attested this KM's officer set yet: compare the officers' key fingerprints "
            "shown above with the ones you know, then approve with --trust-officer-set"
        )
    return officer_side.attest(officer_key, epochs.statement(active))


def approve(
    km: KeyManager,
    request_id: int,
    officer_name: str,
    officer_key: PrivateKey,
    shown: Content,
    trust_officer_set: bool = False,
) -> int:
    """One officer's approval of the content ``shown`` to them, made with their token key.
    Returns the approvals so far."""
    with km.db.read() as tx:
        req = load(tx, request_id)
        # The officer signs what they were shown and unseals each share under the record shown;
        # rows changed since then make completion's recomputed content differ, which refuses it.
        if shown.data["id"] != req.id:
            raise errors.BadInput(f"the content shown is not request {req.id}'s")
        check_open(req, shown, km.clock())
        epoch = epochs.get(tx, req.share_epoch)
        if epoch.status is not epochs.EpochStatus.ACTIVE:
            raise errors.PolicyViolation(f"request {req.id} predates the current officer set; open a new one")
        me = next((o for o in epoch.officers if o.name == officer_name), None)
        if me is None:
            raise errors.PolicyViolation(f"{officer_name} is not a recovery officer")
        if custody.public_der(officer_key.public_key()) != custody.public_der(me.public_key):
            raise errors.PolicyViolation(f"the token's officer key is not {officer_name}'s registered key")
        if tx.recovery.has_approval(req.id, officer_name):
            raise errors.AlreadyExists(f"{officer_name} has already approved request {req.id}")
        attestation = _check_officer_set(tx, officer_name, officer_key, epoch, trust_officer_set)
        text = shown.canonical
        reshares: dict[str, bytes] = {}
        if req.kind is RequestKind.RECOVERY:
            held = tx.shares.sealed_for(epoch.number, officer_name, [v.identity.record_id for v in shown.records])
            rows = []
            for view in shown.records:
                sealed = held.get(view.identity.record_id)
                if sealed is None:
                    raise errors.NotFound(f"archive record {view.identity.record_id} has no share for {officer_name}")
                rows.append((view.identity, sealed))
            signature, blob = officer_side.approve_recovery(
                officer_key, officer_name, me.x, epoch.number, req.id, text, rows, req.public_key
            )
        elif req.kind is RequestKind.MIGRATE:
            pin_share = tx.officers.pin_share(officer_name)
            if pin_share is None or not pin_share[0]:
                raise errors.NotFound(f"{officer_name} holds no share of the recovery token's PIN")
            signature, blob = officer_side.approve_pin_share(
                officer_key, officer_name, pin_share[1], pin_share[0], req.id, text, req.public_key
            )
        else:
            rows = [
                (RecordIdentity(rid, uid, serial), sealed)
                for rid, uid, serial, sealed in tx.shares.officer_records(epoch.number, officer_name)
            ]
            p = shown.data["params"]
            new_officers = [
                NewOfficer(n, int(x), custody.load_public(bytes.fromhex(pub))) for n, x, pub in p["officers"]
            ]
            current = {o.name: custody.public_der(o.public_key) for o in epoch.officers}
            for o in new_officers:
                if o.name in current and current[o.name] != custody.public_der(o.public_key):
                    raise errors.Tampered(
                        f"{o.name}'s key in the new officer set is not their key now; nothing was approved"
                    )
            signature = officer_side.sign_content(officer_key, text)
            blob = b""
            reshares = officer_side.reshare(
                officer_key,
                officer_name,
                me.x,
                epoch.number,
                req.id,
                text,
                rows,
                int(p["epoch"]),
                new_officers,
                int(p["quorum"]),
            )
    now = km.clock()
    with km.change(
        AuditAction.RECOVERY_APPROVE, id=req.id, officer=officer_name, digest=officer_side.content_digest(text).hex()
    ) as ch:
        try:
            ch.tx.recovery.add_approval(req.id, officer_name, signature, blob, now.isoformat())
        except Conflict:
            raise errors.AlreadyExists(f"{officer_name} has already approved request {req.id}") from None
        ch.tx.recovery.add_reshares(req.id, officer_name, reshares)
        if attestation is not None:
            epochs.record_attestation(ch.tx, epoch.number, officer_name, attestation)
            ch.details["attested_officer_set"] = epoch.number
        count = ch.tx.recovery.approval_count(req.id)
        ch.details["approvals"] = count
    return count


def approvers(km: KeyManager, request_id: int) -> list[str]:
    """The officers who approved the request so far."""
    with km.db.read() as tx:
        return tx.recovery.approvers(request_id)


@dataclass(frozen=True)
class Approval:
    officer: str
    x: int
    blob: bytes


def verified_approvals(km: KeyManager, req: Request, content: Content) -> list[Approval]:
    """K approvals whose signatures cover ``content`` (rebuilt from the rows), by officers of
    the request's epoch with their registered keys; any approval that does not is a refusal."""
    with km.db.read() as tx:
        epoch = epochs.get(tx, req.share_epoch)
        rows = tx.recovery.approvals(req.id)
    by_name = {o.name: o for o in epoch.officers}
    out = []
    for a in rows:
        officer = by_name.get(a.officer)
        if officer is None:
            raise errors.Tampered(f"request {req.id} carries an approval by {a.officer}, who is not an officer of it")
        if not officer_side.verify_content(officer.public_key, a.signature, content.canonical):
            raise errors.Tampered(
                f"request {req.id} is not what {a.officer} approved: its records, reason or expiry changed since"
            )
        out.append(Approval(a.officer, officer.x, a.sealed_share))
    if len(out) < epoch.quorum:
        raise errors.QuorumNotMet(f"{len(out)} of {epoch.quorum} approvals for request {req.id}")
    return out[: epoch.quorum]
