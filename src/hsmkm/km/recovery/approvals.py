"""Approvals: an officer's approval made on their own token (a recovery's shares unsealed to
the request's key, a first-release PIN share, or a change's re-shares), and the check at
completion that K approvals cover the request's content as rebuilt from the rows."""

from __future__ import annotations

import sqlite3
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


def officer_set_chain(conn: sqlite3.Connection) -> list[officer_side.EpochRecord]:
    """Every share epoch that was ever active, with its members' attestations and the change
    (content and approval signatures, rebuilt from the rows) that made it."""
    out = []
    for number, quorum, rid, rstatus in conn.execute(
        "SELECT e.epoch, e.quorum, e.request_id, r.status FROM share_epochs e "
        "LEFT JOIN recovery_requests r ON r.id = e.request_id ORDER BY e.epoch"
    ).fetchall():
        if rid is not None and rstatus != RequestStatus.COMPLETED.value:
            continue  # a change that never happened
        officers = tuple((str(n), int(x), bytes(p)) for n, x, p in conn.execute(
            "SELECT officer, x, public_key FROM epoch_officers WHERE epoch = ? ORDER BY x", (number,)))
        attestations = {str(n): bytes(sig) for n, sig in conn.execute(
            "SELECT officer, signature FROM epoch_attestations WHERE epoch = ?", (number,))}
        made_by = None
        if rid is not None:
            base = int(conn.execute("SELECT share_epoch FROM recovery_requests WHERE id = ?", (rid,)).fetchone()[0])
            content = request_content.build(conn, int(rid), None).canonical
            approvals = tuple((str(n), bytes(sig)) for n, sig in conn.execute(
                "SELECT officer, signature FROM approvals WHERE request_id = ?", (rid,)))
            made_by = (base, content, approvals)
        out.append(officer_side.EpochRecord(int(number), int(quorum), officers, attestations, made_by))
    return out


def _check_officer_set(conn: sqlite3.Connection, officer_name: str, officer_key: PrivateKey, active: epochs.Epoch,
                       trust_officer_set: bool) -> bytes | None:
    """The officer's side checks the officer set it is about to work with (an attestation of
    its own, then approved changes only); returns a new attestation when the officer, having
    none yet, chose to trust the set shown to it."""
    chain = officer_set_chain(conn)
    my_der = custody.public_der(officer_key.public_key())
    mine = [r for r in chain if officer_name in r.attestations and (officer_name, my_der) in
            {(n, d) for n, _, d in r.officers}]
    if mine:
        officer_side.verify_officer_set(officer_name, my_der, [r for r in chain if r.number >= mine[-1].number],
                                        active.number)
        return None
    if not trust_officer_set:
        raise errors.PolicyViolation(
            f"{officer_name} has not attested this KM's officer set yet: compare the officers' key fingerprints "
            "shown above with the ones you know, then approve with --trust-officer-set"
        )
    return officer_side.attest(officer_key, epochs.statement(active))


def approve(km: KeyManager, request_id: int, officer_name: str, officer_key: PrivateKey, shown: Content,
            trust_officer_set: bool = False) -> int:
    """One officer's approval of the content ``shown`` to them, made with their token key.
    Returns the approvals so far."""
    conn = km.db.conn
    req = load(conn, request_id)
    # The officer signs what they were shown and unseals each share under the record shown;
    # rows changed since then make completion's recomputed content differ, which refuses it.
    if shown.data["id"] != req.id:
        raise errors.BadInput(f"the content shown is not request {req.id}'s")
    check_open(req, shown, km.clock())
    epoch = epochs.get(conn, req.share_epoch)
    if epoch.status is not epochs.EpochStatus.ACTIVE:
        raise errors.PolicyViolation(f"request {req.id} predates the current officer set; open a new one")
    me = next((o for o in epoch.officers if o.name == officer_name), None)
    if me is None:
        raise errors.PolicyViolation(f"{officer_name} is not a recovery officer")
    if custody.public_der(officer_key.public_key()) != custody.public_der(me.public_key):
        raise errors.PolicyViolation(f"the token's officer key is not {officer_name}'s registered key")
    if conn.execute("SELECT 1 FROM approvals WHERE request_id = ? AND officer = ?", (req.id, officer_name)).fetchone():
        raise errors.AlreadyExists(f"{officer_name} has already approved request {req.id}")
    attestation = _check_officer_set(conn, officer_name, officer_key, epoch, trust_officer_set)
    text = shown.canonical
    reshares: dict[str, bytes] = {}
    if req.kind is RequestKind.RECOVERY:
        rows = []
        for view in shown.records:
            row = conn.execute(
                "SELECT sealed FROM archive_shares WHERE record_id = ? AND epoch = ? AND officer = ?",
                (view.identity.record_id, epoch.number, officer_name),
            ).fetchone()
            if row is None:
                raise errors.NotFound(f"archive record {view.identity.record_id} has no share for {officer_name}")
            rows.append((view.identity, bytes(row[0])))
        signature, blob = officer_side.approve_recovery(
            officer_key, officer_name, me.x, epoch.number, req.id, text, rows, req.public_key
        )
    elif req.kind is RequestKind.MIGRATE:
        row = conn.execute("SELECT share, share_epoch FROM officers WHERE name = ?", (officer_name,)).fetchone()
        if row is None or not bytes(row[0]):
            raise errors.NotFound(f"{officer_name} holds no share of the recovery token's PIN")
        signature, blob = officer_side.approve_pin_share(
            officer_key, officer_name, int(row[1]), bytes(row[0]), req.id, text, req.public_key
        )
    else:
        rows = [
            (RecordIdentity(int(r[0]), int(r[1]), str(r[2])), bytes(r[3]))
            for r in conn.execute(
                "SELECT a.id, a.user_id, a.cert_serial, s.sealed FROM archive_shares s JOIN archive a ON a.id = s.record_id "
                "WHERE s.epoch = ? AND s.officer = ? ORDER BY a.id",
                (epoch.number, officer_name),
            )
        ]
        p = shown.data["params"]
        new_officers = [NewOfficer(n, int(x), custody.load_public(bytes.fromhex(pub))) for n, x, pub in p["officers"]]
        current = {o.name: custody.public_der(o.public_key) for o in epoch.officers}
        for o in new_officers:
            if o.name in current and current[o.name] != custody.public_der(o.public_key):
                raise errors.Tampered(f"{o.name}'s key in the new officer set is not their key now; nothing was approved")
        signature = officer_side.sign_content(officer_key, text)
        blob = b""
        reshares = officer_side.reshare(
            officer_key, officer_name, me.x, epoch.number, req.id, text, rows, int(p["epoch"]), new_officers,
            int(p["quorum"]),
        )
    now = km.clock()
    with km.change(AuditAction.RECOVERY_APPROVE, id=req.id, officer=officer_name,
                   digest=officer_side.content_digest(text).hex()) as ch:
        try:
            ch.conn.execute(
                "INSERT INTO approvals(request_id, officer, signature, sealed_share, approved_at) VALUES (?, ?, ?, ?, ?)",
                (req.id, officer_name, signature, blob, now.isoformat()),
            )
        except sqlite3.IntegrityError:
            raise errors.AlreadyExists(f"{officer_name} has already approved request {req.id}") from None
        ch.conn.executemany(
            "INSERT INTO reshares(request_id, from_officer, to_officer, sealed) VALUES (?, ?, ?, ?)",
            [(req.id, officer_name, to, sealed) for to, sealed in reshares.items()],
        )
        if attestation is not None:
            epochs.record_attestation(ch.conn, epoch.number, officer_name, attestation)
            ch.details["attested_officer_set"] = epoch.number
        count = int(ch.conn.execute("SELECT COUNT(*) FROM approvals WHERE request_id = ?", (req.id,)).fetchone()[0])
        ch.details["approvals"] = count
    return count


@dataclass(frozen=True)
class Approval:
    officer: str
    x: int
    blob: bytes


def verified_approvals(km: KeyManager, req: Request, content: Content) -> list[Approval]:
    """K approvals whose signatures cover ``content`` (rebuilt from the rows), by officers of
    the request's epoch with their registered keys; any approval that does not is a refusal."""
    epoch = epochs.get(km.db.conn, req.share_epoch)
    by_name = {o.name: o for o in epoch.officers}
    out = []
    for name, signature, blob in km.db.conn.execute(
        "SELECT officer, signature, sealed_share FROM approvals WHERE request_id = ? ORDER BY approved_at, officer",
        (req.id,),
    ):
        officer = by_name.get(name)
        if officer is None:
            raise errors.Tampered(f"request {req.id} carries an approval by {name}, who is not an officer of it")
        if not officer_side.verify_content(officer.public_key, bytes(signature), content.canonical):
            raise errors.Tampered(
                f"request {req.id} is not what {name} approved: its records, reason or expiry changed since"
            )
        out.append(Approval(name, officer.x, bytes(blob)))
    if len(out) < epoch.quorum:
        raise errors.QuorumNotMet(f"{len(out)} of {epoch.quorum} approvals for request {req.id}")
    return out[: epoch.quorum]
