"""Completing a recovery: with K approvals, exactly the approved records' keys rebuilt from
the officers' shares (custody rule 4), then exported or held for re-enrollment, once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hsmkm import errors
from hsmkm.km import archive, officer_side, request_content, shamir, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.recovery.approvals import Approval, verified_approvals
from hsmkm.km.recovery.claims import claim, finish, no_pause, release
from hsmkm.km.recovery.held import RecoveredKey, hold_for_code
from hsmkm.km.recovery.requests import (
    Request,
    RequestKind,
    check_expiry,
    destroy_request_key,
    load,
    request_key,
)
from hsmkm.km.request_content import Content


def _record_keys(km: KeyManager, req: Request, content: Content, approvals: Sequence[Approval]) -> dict[int, bytes]:
    """Each approved record's key, from K officers' shares opened with the request's key."""
    key = request_key(km, req)
    wanted = {v.identity.record_id: v.identity for v in content.records}
    shares: dict[int, list[shamir.Share]] = {rid: [] for rid in wanted}
    for a in approvals:
        seen = set()
        for e in officer_side.open_approval(key, a.blob, req.id, a.officer, content.canonical):
            if wanted.get(e.record.record_id) != e.record or e.share.x != a.x or e.record.record_id in seen:
                raise errors.Tampered(f"{a.officer}'s approval of request {req.id} carries shares it did not approve")
            seen.add(e.record.record_id)
            shares[e.record.record_id].append(e.share)
    out = {}
    for rid, got in shares.items():
        if len(got) != len(approvals):
            raise errors.Tampered(f"the approvals of request {req.id} lack shares of archive record {rid}")
        out[rid] = shamir.combine(got)
    return out


def _open_records(km: KeyManager, content: Content, record_keys: dict[int, bytes]) -> list[RecoveredKey]:
    out = []
    masters: dict[str, Any] = {}
    with km.db.read() as tx:
        records = archive.records_by_id(tx, [v.identity.record_id for v in content.records])
        certs = {rid: r.cert_der for rid, r in tx.recovery.content_records([rec.id for rec in records]).items()}
    for rec in records:
        master = masters.get(rec.master_label)
        if master is None:
            master = masters[rec.master_label] = km.archive_key_by_label(rec.master_label)
        inner = archive.open_outer(rec, master)
        key = archive.open_inner(rec, inner, record_keys[rec.id])
        der = certs.get(rec.id)
        if der is None:
            raise errors.Tampered(f"the certificate of archive record {rec.id} is missing")
        out.append(RecoveredKey(rec.id, rec.cert_serial, key, der))
    return out


@dataclass(frozen=True)
class Completion:
    request_id: int
    email: str | None
    keys: list[RecoveredKey]
    code: str | None


def complete_recovery(
    km: KeyManager,
    request_id: int,
    deliver: Callable[[list[RecoveredKey]], None] | None,
    reenable: bool,
    before_commit: Callable[[str], None] | None = None,
    after_claim: Callable[[], None] = no_pause,
) -> Completion:
    """With K approvals: open exactly the approved records, deliver them (``deliver`` writes the
    export file) or hold them for re-enrollment under a one-time code, which ``before_commit``
    may write to its destination before the commit. ``after_claim`` is a seam for tests."""
    with km.db.read() as tx:
        req = load(tx, request_id)
        if req.kind is not RequestKind.RECOVERY:
            raise errors.BadInput(f"request {req.id} is a {req.kind.value} request")
        content = request_content.build(tx, request_id, None)
    approvals = verified_approvals(km, req, content)
    check_expiry(req, content, km.clock())  # whatever the status says: a claim can be forged
    me = claim(km, req)
    try:
        after_claim()
        keys = _open_records(km, content, _record_keys(km, req, content, approvals))
        if deliver is not None:
            deliver(keys)
        code = None
        with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, email=req.email, records=req.records) as ch:
            if reenable:
                assert req.user_id is not None
                code, code_row = users.issue_code(
                    ch.tx,
                    req.user_id,
                    users.CodePurpose.RECOVERY,
                    km.clock(),
                    km.config.code_ttl_days,
                    km.config.code_max_attempts,
                    req.id,
                )
                hold_for_code(ch.tx, code_row, code, keys)
                if before_commit is not None:
                    before_commit(code)
            finish(ch.tx, req, me)
            ch.details.update(mode="reenable" if reenable else "export")
    except BaseException:
        release(km, req, me)
        raise
    destroy_request_key(km.session, req.key_label)
    return Completion(req.id, req.email, keys, code)


def record_serials(km: KeyManager, request_id: int) -> set[str]:
    """The certificate serials of the records a recovery request names."""
    with km.db.read() as tx:
        req = load(tx, request_id)
        return {r.cert_serial for r in archive.records_by_id(tx, req.records)}
