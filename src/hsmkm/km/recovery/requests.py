"""Quorum-gated requests: what a recovery, an officer or quorum change, or an archive
migration asks for, the request's own key on the KM token, and the request's lifetime."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pkcs11 import ObjectClass

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.keys.pkcs11 import TokenSession
from hsmkm.km import archive, custody, epochs, officer_side, request_content, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.request_content import Content

REQUEST_KEY_PREFIX = "hsmkm-request-"


class RequestKind(str, Enum):
    RECOVERY = "recovery"
    OFFICER_ADD = "officer-add"
    OFFICER_REMOVE = "officer-remove"
    POLICY = "policy"
    MIGRATE = "archive-migrate"


CHANGE_KINDS = (RequestKind.OFFICER_ADD, RequestKind.OFFICER_REMOVE, RequestKind.POLICY)


class RequestStatus(str, Enum):
    OPEN = "open"
    COMPLETING = "completing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


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


def load(conn: sqlite3.Connection, request_id: int) -> Request:
    r = conn.execute(
        "SELECT r.id, r.user_id, u.email, r.kind, r.reason, r.requested_by, r.created_at, r.expires_at, r.status, "
        "r.records, r.request_key_label, r.request_public_key, r.share_epoch, r.params, r.digest "
        "FROM recovery_requests r LEFT JOIN users u ON u.id = r.user_id WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if r is None:
        raise errors.NotFound(f"no request {request_id}")
    try:
        return Request(
            r[0], r[1], r[2], RequestKind(r[3]), r[4], r[5], r[6], r[7], RequestStatus(r[8]), json.loads(r[9]),
            r[10], custody.load_public(bytes(r[11])), int(r[12]), json.loads(r[13]), bytes(r[14]),
        )
    except (ValueError, TypeError):
        raise errors.Tampered(f"request {request_id} is malformed in the database") from None


def list_requests(conn: sqlite3.Connection) -> list[Request]:
    return [load(conn, int(r[0])) for r in conn.execute("SELECT id FROM recovery_requests ORDER BY id")]


def _has_v1_records(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM archive WHERE format_version = ? LIMIT 1", (archive.FORMAT_V1,)).fetchone() is not None


def _change_params(conn: sqlite3.Connection, kind: RequestKind, params: dict[str, Any]) -> tuple[int, list[tuple[str, PublicKey]]]:
    """The quorum and officer set a change asks for."""
    current = epochs.active(conn)
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
            conn = ch.conn
            user_id = None
            records: list[int] = []
            retire_stale(conn, now)
            active = epochs.active(conn)
            if kind is RequestKind.RECOVERY:
                assert email is not None
                user = users.find_user(conn, email)
                user_id = user.id
                found = archive.records_for_user(conn, user.id)
                if not found:
                    raise errors.NotFound(f"{user.email} has no archived keys")
                if any(r.format_version != archive.FORMAT_VERSION for r in found):
                    raise errors.PolicyViolation(
                        f"{user.email}'s archive is in the first release's format: run 'hsmkm archive migrate' first"
                    )
                records = [r.id for r in found]
                email = user.email
            elif kind is RequestKind.MIGRATE:
                if not _has_v1_records(conn) and km.db.get_meta("recovery_public_key") is None:
                    raise errors.PolicyViolation("the archive has nothing to migrate")
            else:
                if _has_v1_records(conn):
                    raise errors.PolicyViolation("migrate the archive first ('hsmkm archive migrate')")
            pub_der = custody.public_der(key.public_key())
            cur = conn.execute(
                "INSERT INTO recovery_requests(user_id, reason, requested_by, created_at, expires_at, status, records, "
                "digest, request_key_label, request_public_key, share_epoch, kind, params) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, reason, km.actor, now.isoformat(), expires.isoformat(), RequestStatus.OPEN.value,
                 json.dumps(records), b"", label, pub_der, active.number, kind.value, "{}"),
            )
            rid = int(cur.lastrowid or 0)
            if kind in CHANGE_KINDS:
                quorum, officers = _change_params(conn, kind, params)
                pending = epochs.create(conn, quorum, officers, epochs.EpochStatus.PENDING, rid)
                params.update(
                    epoch=pending.number, quorum=quorum,
                    officers=[[o.name, o.x, custody.public_der(o.public_key).hex()] for o in pending.officers],
                )
            conn.execute("UPDATE recovery_requests SET params = ? WHERE id = ?", (json.dumps(params, sort_keys=True), rid))
            content = request_content.build(conn, rid, None)
            digest = officer_side.content_digest(content.canonical)
            conn.execute("UPDATE recovery_requests SET digest = ? WHERE id = ?", (digest, rid))
            ch.details.update(id=rid, email=email, records=records, digest=digest.hex(), expires=expires.isoformat())
    except BaseException:
        destroy_request_key(km.session, label)
        raise
    return load(km.db.conn, rid)


def request_key(km: KeyManager, req: Request) -> PrivateKey:
    """The request's private key on the KM token, which opens what the approvals sealed."""
    try:
        return km.session.private_key(label=req.key_label)
    except errors.KeyNotFound:
        raise errors.PolicyViolation(
            f"request {req.id}'s key is gone from the KM token: the request was completed or cancelled"
        ) from None


def destroy_request_key(session: TokenSession, label: str) -> None:
    session.destroy(label, ObjectClass.PRIVATE_KEY)
    session.destroy(label, ObjectClass.PUBLIC_KEY)


def content_for_officer(km: KeyManager, request_id: int) -> Content:
    """What an officer is shown before approving: rebuilt from the rows, each record's
    certificate checked against the CA certificate's signature."""
    return request_content.build(km.db.conn, request_id, km.ca_cert)


def check_expiry(req: Request, content: Content, now: datetime) -> None:
    """Expiry as signed (the content is rebuilt from the rows, and the approvals cover it)."""
    if now > datetime.fromisoformat(content.expires):
        raise errors.PolicyViolation(f"request {req.id} expired at {content.expires}")


def check_open(req: Request, content: Content, now: datetime) -> None:
    if req.status is not RequestStatus.OPEN:
        raise errors.PolicyViolation(f"request {req.id} is {req.status.value}")
    check_expiry(req, content, now)


def retire_stale(conn: sqlite3.Connection, now: datetime) -> None:
    """Pending epochs of change requests that ended or expired stop receiving new records'
    shares (inside the caller's transaction)."""
    for epoch_no, status, expires in conn.execute(
        "SELECT e.epoch, r.status, r.expires_at FROM share_epochs e JOIN recovery_requests r ON r.id = e.request_id "
        "WHERE e.status = ?",
        (epochs.EpochStatus.PENDING.value,),
    ).fetchall():
        if status not in (RequestStatus.OPEN.value, RequestStatus.COMPLETING.value) or now > datetime.fromisoformat(expires):
            epochs.retire(conn, int(epoch_no))
