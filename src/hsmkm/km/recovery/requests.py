"""Quorum-gated requests: what a recovery, an officer or quorum change, or an archive
migration asks for, the request's own key on the KM token, and the request's lifetime."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.keys.token import ObjectKind, Token
from hsmkm.km import archive, custody, epochs, officer_side, request_content, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.request_content import Content
from hsmkm.store.repos.recovery import NewRequest, RequestKind, RequestStatus
from hsmkm.store.tx import Tx

__all__ = [
    "CHANGE_KINDS",
    "REQUEST_KEY_PREFIX",
    "Request",
    "RequestKind",
    "RequestStatus",
    "check_expiry",
    "check_open",
    "content_for_officer",
    "destroy_request_key",
    "get",
    "list_requests",
    "load",
    "open_request",
    "request_key",
    "retire_stale",
]

REQUEST_KEY_PREFIX = "hsmkm-request-"

CHANGE_KINDS = (RequestKind.OFFICER_ADD, RequestKind.OFFICER_REMOVE, RequestKind.POLICY)


@dataclass(frozen=True)
class Request:
    id: int
    user_id: int | None
    email: str | None
    kind: RequestKind
    reason: str
    requested_by: str
    created_at: str
    expires_at: str
    status: RequestStatus
    records: list[int]
    key_label: str
    public_key: PublicKey
    share_epoch: int
    params: dict[str, Any]
    digest: bytes


def load(tx: Tx, request_id: int) -> Request:
    malformed = errors.Tampered(f"request {request_id} is malformed in the database")
    try:
        r = tx.recovery.get(request_id)
    except ValueError:
        raise malformed from None
    if r is None:
        raise errors.NotFound(f"no request {request_id}")
    try:
        return Request(
            r.id,
            r.user_id,
            r.email,
            r.kind,
            r.reason,
            r.requested_by,
            r.created_at,
            r.expires_at,
            r.status,
            json.loads(r.records),
            r.key_label,
            custody.load_public(r.public_key),
            r.share_epoch,
            json.loads(r.params),
            r.digest,
        )
    except (ValueError, TypeError):
        raise malformed from None


def get(km: KeyManager, request_id: int) -> Request:
    """The request as the database holds it now."""
    with km.db.read() as tx:
        return load(tx, request_id)


def list_requests(tx: Tx) -> list[Request]:
    return [load(tx, rid) for rid in tx.recovery.ids()]


def _has_v1_records(tx: Tx) -> bool:
    return tx.archive.count(format_version=archive.FORMAT_V1) > 0


def _change_params(tx: Tx, kind: RequestKind, params: dict[str, Any]) -> tuple[int, list[tuple[str, PublicKey]]]:
    """The quorum and officer set a change asks for."""
    current = epochs.active(tx)
    officers = [(o.name, o.public_key) for o in current.officers]
    quorum = current.quorum
    if kind is RequestKind.OFFICER_ADD:
        if any(n == params["name"] for n, _ in officers):
            raise errors.AlreadyExists(f"{params['name']} is already an officer")
        officers.append((params["name"], custody.load_public(bytes.fromhex(params["public_key"]))))
    elif kind is RequestKind.OFFICER_REMOVE:
        if not any(n == params["name"] for n, _ in officers):
            raise errors.NotFound(f"{params['name']} is not an officer")
        officers = [(n, p) for n, p in officers if n != params["name"]]
        quorum = min(quorum, len(officers))
    elif kind is RequestKind.POLICY:
        quorum = int(params["quorum"])
    if not officers:
        raise errors.PolicyViolation("at least one officer must remain")
    if not 1 <= quorum <= len(officers):
        raise errors.PolicyViolation(f"quorum {quorum} must be between 1 and the {len(officers)} officers")
    return quorum, officers


def open_request(
    km: KeyManager,
    kind: RequestKind,
    reason: str,
    email: str | None = None,
    params: dict[str, Any] | None = None,
) -> Request:
    """Open a request: for a recovery, all of the user's archived keys (current and history);
    for an officer or quorum change, a pending share epoch for the new officer set."""
    if not reason.strip():
        raise errors.BadInput("give a reason")
    params = dict(params or {})
    now = km.clock()
    expires = now + timedelta(hours=km.config.recovery_request_hours)
    label = REQUEST_KEY_PREFIX + os.urandom(8).hex()
    # The request's own key pair on the KM token: approvals seal shares to it, and it is
    # destroyed when the request ends.
    key = km.session.generate_keypair(KeyAlgorithm.P256, label, label.encode(), sign=False, decrypt=False, derive=True)
    try:
        action = AuditAction.RECOVERY_REQUEST if kind is RequestKind.RECOVERY else AuditAction.POLICY_CHANGE
        with km.change(action, kind=kind.value, reason=reason, stage="request") as ch:
            tx = ch.tx
            user_id = None
            records: list[int] = []
            retire_stale(tx, now)
            active = epochs.active(tx)
            if kind is RequestKind.RECOVERY:
                assert email is not None
                user = users.find_user(tx, email)
                user_id = user.id
                found = archive.records_for_user(tx, user.id)
                if not found:
                    raise errors.NotFound(f"{user.email} has no archived keys")
                if any(r.format_version != archive.FORMAT_VERSION for r in found):
                    raise errors.PolicyViolation(
                        f"{user.email}'s archive is in the first release's format: run 'hsmkm archive migrate' first"
                    )
                records = [r.id for r in found]
                email = user.email
            elif kind is RequestKind.MIGRATE:
                if not _has_v1_records(tx) and tx.meta.get("recovery_public_key") is None:
                    raise errors.PolicyViolation("the archive has nothing to migrate")
            else:
                if _has_v1_records(tx):
                    raise errors.PolicyViolation("migrate the archive first ('hsmkm archive migrate')")
            pub_der = custody.public_der(key.public_key())
            rid = tx.recovery.add(
                NewRequest(
                    user_id,
                    kind,
                    reason,
                    km.actor,
                    now.isoformat(),
                    expires.isoformat(),
                    json.dumps(records),
                    label,
                    pub_der,
                    active.number,
                )
            )
            if kind in CHANGE_KINDS:
                quorum, officers = _change_params(tx, kind, params)
                pending = epochs.create(tx, quorum, officers, epochs.EpochStatus.PENDING, rid)
                params.update(
                    epoch=pending.number,
                    quorum=quorum,
                    officers=[[o.name, o.x, custody.public_der(o.public_key).hex()] for o in pending.officers],
                )
            tx.recovery.set_params(rid, json.dumps(params, sort_keys=True))
            content = request_content.build(tx, rid, None)
            digest = officer_side.content_digest(content.canonical)
            tx.recovery.set_digest(rid, digest)
            ch.details.update(id=rid, email=email, records=records, digest=digest.hex(), expires=expires.isoformat())
    except BaseException:
        destroy_request_key(km.session, label)
        raise
    return get(km, rid)


def request_key(km: KeyManager, req: Request) -> PrivateKey:
    """The request's private key on the KM token, which opens what the approvals sealed."""
    try:
        return km.session.private_key(label=req.key_label)
    except errors.KeyNotFound:
        raise errors.PolicyViolation(
            f"request {req.id}'s key is gone from the KM token: the request was completed or cancelled"
        ) from None


def destroy_request_key(session: Token, label: str) -> None:
    session.destroy(label, ObjectKind.PRIVATE_KEY)
    session.destroy(label, ObjectKind.PUBLIC_KEY)


def content_for_officer(km: KeyManager, request_id: int) -> Content:
    """What an officer is shown before approving: rebuilt from the rows, each record's
    certificate checked against the CA certificate's signature."""
    with km.db.read() as tx:
        return request_content.build(tx, request_id, km.ca_cert)


def check_expiry(req: Request, content: Content, now: datetime) -> None:
    """Expiry as signed (the content is rebuilt from the rows, and the approvals cover it)."""
    if now > datetime.fromisoformat(content.expires):
        raise errors.PolicyViolation(f"request {req.id} expired at {content.expires}")


def check_open(req: Request, content: Content, now: datetime) -> None:
    if req.status is not RequestStatus.OPEN:
        raise errors.PolicyViolation(f"request {req.id} is {req.status.value}")
    check_expiry(req, content, now)


def retire_stale(tx: Tx, now: datetime) -> None:
    """Pending epochs of change requests that ended or expired stop receiving new records'
    shares (inside the caller's transaction)."""
    for epoch_no, status, expires in tx.epochs.pending_changes():
        if status not in (RequestStatus.OPEN, RequestStatus.COMPLETING) or now > datetime.fromisoformat(expires):
            epochs.retire(tx, epoch_no)
