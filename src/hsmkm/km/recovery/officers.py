"""Officer and quorum changes: an approved change carried out by redistribution (each
officer of the new set combines the sub-shares the approving officers sent it into its new
share of every record), the new share epoch made active and the officers table brought in
line."""

from __future__ import annotations

import sqlite3
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


def complete_change(
    km: KeyManager, request_id: int, officer_key: Callable[[str], PrivateKey], after_claim: Callable[[], None] = no_pause
) -> dict[str, Any]:
    """Carry out an approved officer or quorum change: each officer of the new set combines
    the sub-shares the approving officers sent it (``officer_key(name)`` gives its token key,
    on its own machine in a distributed setting) into its new share of every record."""
    req = load(km.db.conn, request_id)
    if req.kind not in CHANGE_KINDS:
        raise errors.BadInput(f"request {req.id} is a {req.kind.value} request")
    conn = km.db.conn
    content = request_content.build(conn, request_id, None)
    approvals = verified_approvals(km, req, content)
    check_expiry(req, content, km.clock())  # whatever the status says: a claim can be forged
    old = epochs.get(conn, req.share_epoch)
    new = epochs.get(conn, int(req.params["epoch"]))
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
                row = conn.execute(
                    "SELECT sealed FROM reshares WHERE request_id = ? AND from_officer = ? AND to_officer = ?",
                    (req.id, a.officer, o.name),
                ).fetchone()
                if row is None:
                    raise errors.Tampered(f"the sub-shares from {a.officer} to {o.name} are missing")
                received.append((a.officer, a.x, bytes(row[0])))
            for rec, sealed in officer_side.combine_received(
                key, NewOfficer(o.name, o.x, o.public_key), new.number, req.id, content.canonical, received
            ):
                new_rows.append((rec.record_id, o.name, o.x, sealed))
        covered: dict[int, int] = {}
        for rid, *_ in new_rows:
            covered[rid] = covered.get(rid, 0) + 1
        for (rid,) in conn.execute("SELECT id FROM archive ORDER BY id").fetchall():
            direct = conn.execute(
                "SELECT COUNT(*) FROM archive_shares WHERE record_id = ? AND epoch = ?", (rid, new.number)
            ).fetchone()[0]
            if direct < len(new.officers) and covered.get(rid, 0) < len(new.officers):
                raise errors.PolicyViolation(
                    f"archive record {rid} was not re-shared by every approving officer; approve request {req.id} again"
                )
        with km.change(AuditAction.POLICY_CHANGE, id=req.id, kind=req.kind.value, stage="complete") as ch:
            ch.conn.executemany(
                "INSERT OR IGNORE INTO archive_shares(record_id, epoch, officer, x, sealed) VALUES (?, ?, ?, ?, ?)",
                [(rid, new.number, name, x, sealed) for rid, name, x, sealed in new_rows],
            )
            for name, sig in attestations:
                epochs.record_attestation(ch.conn, new.number, name, sig)
            _activate_officers(ch.conn, req, new, km.clock())
            finish(ch.conn, req, me)
            ch.details.update(officers=[o.name for o in new.officers], quorum=new.quorum, new_epoch=new.number,
                              records=len(covered))
    except BaseException:
        release(km, req, me)
        raise
    destroy_request_key(km.session, req.key_label)
    return {"officers": [o.name for o in new.officers], "quorum": new.quorum}


def _activate_officers(conn: sqlite3.Connection, req: Request, new: epochs.Epoch, now: datetime) -> None:
    """The new epoch active, the old shares gone, the officers table and other pending changes
    brought in line (a change opened against the old set is cancelled)."""
    for (other,) in conn.execute(
        "SELECT request_id FROM share_epochs WHERE status = ? AND epoch != ?", (epochs.EpochStatus.PENDING.value, new.number)
    ).fetchall():
        if other is not None:
            conn.execute("UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ?",
                         (RequestStatus.CANCELLED.value, other, RequestStatus.OPEN.value))
    epochs.activate(conn, new.number)
    names = [o.name for o in new.officers]
    conn.execute(
        f"UPDATE officers SET status = ? WHERE name NOT IN ({','.join('?' * len(names))})",
        (custody.OfficerStatus.REMOVED, *names),
    )
    for o in new.officers:
        uri = req.params.get("uri") if o.name == req.params.get("name") else None
        conn.execute(
            "INSERT INTO officers(name, uri, public_key, share, share_epoch, status, added_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET uri = COALESCE(?, officers.uri), public_key = excluded.public_key, "
            "share = excluded.share, share_epoch = excluded.share_epoch, status = excluded.status",
            (o.name, uri or "", custody.public_der(o.public_key), b"", new.number, custody.OfficerStatus.ACTIVE,
             now.isoformat(), uri),
        )
    if req.kind is RequestKind.OFFICER_ADD and "token_serial" in req.params:
        conn.execute(
            "INSERT INTO officer_tokens(officer, token_serial, token_label) VALUES (?, ?, ?) "
            "ON CONFLICT(officer) DO UPDATE SET token_serial = excluded.token_serial, token_label = excluded.token_label",
            (req.params["name"], req.params["token_serial"], req.params.get("token_label", "")),
        )

