"""Token-gated recovery: a request, K officer approvals made on the officers' own tokens, one
use of the recovery token's PIN, then a fresh PIN re-split (custody rule 4).

The same request/approve machinery gates changes of the officers and of the quorum: nobody
re-splits the PIN without a quorum of the officers who hold it now.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import ObjectClass

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.keys.pkcs11 import TokenSession
from hsmkm.km import archive, custody, sealing, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.config import OFFICER_KEY_LABEL, RECOVERY_KEY_LABEL
from hsmkm.km.manager import KeyManager, open_token
from hsmkm.protocol import SealedKey, code_key, seal_key

REQUEST_KEY_PREFIX = "hsmkm-request-"


class RequestKind(str, Enum):
    RECOVERY = "recovery"
    OFFICER_ADD = "officer-add"
    OFFICER_REMOVE = "officer-remove"
    POLICY = "policy"


class RequestStatus(str, Enum):
    OPEN = "open"
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
    digest: bytes
    key_label: str
    public_key: PublicKey
    share_epoch: int
    params: dict[str, Any]


def _digest(fields: dict[str, Any]) -> bytes:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"hsmkm-request-v1\x00" + body).digest()


def _load(conn: sqlite3.Connection, request_id: int) -> Request:
    r = conn.execute(
        "SELECT r.id, r.user_id, u.email, r.kind, r.reason, r.requested_by, r.created_at, r.expires_at, r.status, "
        "r.records, r.digest, r.request_key_label, r.request_public_key, r.share_epoch, r.params "
        "FROM recovery_requests r LEFT JOIN users u ON u.id = r.user_id WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if r is None:
        raise errors.NotFound(f"no request {request_id}")
    return Request(
        r[0], r[1], r[2], RequestKind(r[3]), r[4], r[5], r[6], r[7], RequestStatus(r[8]), json.loads(r[9]),
        bytes(r[10]), r[11], custody.load_public(bytes(r[12])), int(r[13]), json.loads(r[14]),
    )


def open_request(
    km: KeyManager,
    kind: RequestKind,
    reason: str,
    email: str | None = None,
    params: dict[str, Any] | None = None,
) -> Request:
    """Open a request: for a recovery, all of the user's archived keys (current and history)."""
    if not reason.strip():
        raise errors.BadInput("give a reason")
    now = km.clock()
    expires = now + timedelta(hours=km.config.recovery_request_hours)
    label = REQUEST_KEY_PREFIX + os.urandom(8).hex()
    # The request's own key pair on the KM token: approvals re-seal shares to it, and it is
    # destroyed when the request ends.
    key = km.session.generate_keypair(KeyAlgorithm.P256, label, label.encode(), sign=False, decrypt=False, derive=True)
    try:
        action = AuditAction.RECOVERY_REQUEST if kind is RequestKind.RECOVERY else AuditAction.POLICY_CHANGE
        with km.change(action, kind=kind.value, reason=reason, stage="request") as ch:
            conn = ch.conn
            user_id = None
            records: list[int] = []
            if kind is RequestKind.RECOVERY:
                assert email is not None
                user = users.find_user(conn, email)
                user_id = user.id
                records = [r.id for r in archive.records_for_user(conn, user.id)]
                if not records:
                    raise errors.NotFound(f"{user.email} has no archived keys")
                email = user.email
            epoch = custody.epoch(conn)
            pub_der = custody.public_der(key.public_key())
            cur = conn.execute(
                "INSERT INTO recovery_requests(user_id, reason, requested_by, created_at, expires_at, status, records, "
                "digest, request_key_label, request_public_key, share_epoch, kind, params) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, reason, km.actor, now.isoformat(), expires.isoformat(), RequestStatus.OPEN.value,
                 json.dumps(records), b"", label, pub_der, epoch, kind.value, json.dumps(params or {}, sort_keys=True)),
            )
            rid = int(cur.lastrowid or 0)
            digest = _digest(
                {"id": rid, "kind": kind.value, "email": email, "records": records, "reason": reason,
                 "created": now.isoformat(), "expires": expires.isoformat(), "key": pub_der.hex(),
                 "epoch": epoch, "params": params or {}}
            )
            conn.execute("UPDATE recovery_requests SET digest = ? WHERE id = ?", (digest, rid))
            ch.details.update(id=rid, email=email, records=records, digest=digest.hex(), expires=expires.isoformat())
    except BaseException:
        _destroy_key(km.session, label)
        raise
    return _load(km.db.conn, rid)


def _destroy_key(session: TokenSession, label: str) -> None:
    session.destroy(label, ObjectClass.PRIVATE_KEY)
    session.destroy(label, ObjectClass.PUBLIC_KEY)


def _approval_context(request_id: int, officer: str) -> bytes:
    return f"hsmkm-approval\x00{request_id}\x00{officer}".encode()


def _check_open(req: Request, now: datetime) -> None:
    if req.status is not RequestStatus.OPEN:
        raise errors.PolicyViolation(f"request {req.id} is {req.status.value}")
    if now > datetime.fromisoformat(req.expires_at):
        raise errors.PolicyViolation(f"request {req.id} expired at {req.expires_at}")


def approve(km: KeyManager, request_id: int, officer_name: str, officer_token: TokenSession) -> int:
    """One officer's approval, made on the officer's own token. Returns approvals so far."""
    now = km.clock()
    conn = km.db.conn
    req = _load(conn, request_id)
    _check_open(req, now)
    officers = {o.name: o for o in custody.active_officers(conn)}
    officer = officers.get(officer_name)
    if officer is None:
        raise errors.PolicyViolation(f"{officer_name} is not a recovery officer")
    if officer.epoch != req.share_epoch:
        raise errors.PolicyViolation(f"request {req.id} predates the current split; open a new one")
    key = officer_token.private_key(label=OFFICER_KEY_LABEL)
    if custody.public_der(key.public_key()) != custody.public_der(officer.public_key):
        raise errors.PolicyViolation(f"the token's officer key is not {officer_name}'s registered key")
    if conn.execute(
        "SELECT 1 FROM approvals WHERE request_id = ? AND officer = ?", (req.id, officer_name)
    ).fetchone():
        raise errors.AlreadyExists(f"{officer_name} has already approved request {req.id}")
    signature = _sign_digest(key, req.digest)
    share = sealing.unseal(key, officer.sealed_share, custody.share_context(officer_name, officer.epoch))
    resealed = sealing.seal(req.public_key, share, _approval_context(req.id, officer_name))
    del share
    with km.change(AuditAction.RECOVERY_APPROVE, id=req.id, officer=officer_name, digest=req.digest.hex()) as ch:
        try:
            ch.conn.execute(
                "INSERT INTO approvals(request_id, officer, signature, sealed_share, approved_at) VALUES (?, ?, ?, ?, ?)",
                (req.id, officer_name, signature, resealed, now.isoformat()),
            )
        except sqlite3.IntegrityError:
            raise errors.AlreadyExists(f"{officer_name} has already approved request {req.id}") from None
        count = int(ch.conn.execute("SELECT COUNT(*) FROM approvals WHERE request_id = ?", (req.id,)).fetchone()[0])
        ch.details["approvals"] = count
    return count


def _sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(hashes.SHA256()))
    from cryptography.hazmat.primitives.asymmetric import padding

    return key.sign(digest, padding.PKCS1v15(), hashes.SHA256())


def _verify_digest(public: PublicKey, signature: bytes, digest: bytes) -> bool:
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, digest, ec.ECDSA(hashes.SHA256()))
        else:
            from cryptography.hazmat.primitives.asymmetric import padding

            public.verify(signature, digest, padding.PKCS1v15(), hashes.SHA256())
        return True
    except InvalidSignature:
        return False


def valid_approvals(km: KeyManager, req: Request) -> list[tuple[str, bytes]]:
    """(officer, sealed share) of each approval that still counts: an active officer of the
    request's split whose signature over the request's digest verifies. One per officer."""
    officers = {o.name: o for o in custody.active_officers(km.db.conn)}
    out = []
    for name, signature, sealed in km.db.conn.execute(
        "SELECT officer, signature, sealed_share FROM approvals WHERE request_id = ? ORDER BY approved_at", (req.id,)
    ):
        officer = officers.get(name)
        if officer is None or officer.epoch != req.share_epoch:
            continue
        if _verify_digest(officer.public_key, bytes(signature), req.digest):
            out.append((name, bytes(sealed)))
    return out


@dataclass
class Unlocked:
    """The recovery token, logged in with the rebuilt PIN, for one completion."""

    session: TokenSession
    pin: str
    already_rotated: bool


def _unlock(km: KeyManager, req: Request) -> Unlocked:
    quorum = custody.quorum(km.db.conn)
    approvals = valid_approvals(km, req)
    if len(approvals) < quorum:
        raise errors.QuorumNotMet(f"{len(approvals)} of {quorum} approvals for request {req.id}")
    request_key = km.session.private_key(label=req.key_label)
    shares = [sealing.unseal(request_key, sealed, _approval_context(req.id, name)) for name, sealed in approvals[:quorum]]
    pin = custody.combine_pin(shares)
    try:
        return Unlocked(open_token(km.config.recovery_token, pin, km.config.softhsm_config), pin, False)
    except errors.WrongPin:
        pending = _pending(km.db.conn)
        if pending is None or pending["request"] != req.id:
            raise errors.SignatureInvalid("the approvals do not rebuild the recovery token's PIN") from None
    # A completion that crashed after changing the PIN left the new PIN sealed to this request.
    new_pin = sealing.unseal(request_key, bytes.fromhex(pending["sealed_pin"]), _pin_context(req.id)).decode()
    return Unlocked(open_token(km.config.recovery_token, new_pin, km.config.softhsm_config), new_pin, True)


def _pin_context(request_id: int) -> bytes:
    return f"hsmkm-new-pin\x00{request_id}".encode()


def _pending(conn: sqlite3.Connection) -> dict[str, Any] | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'pending_split'").fetchone()
    return None if row is None else dict(json.loads(row[0]))


@dataclass(frozen=True)
class RecoveredKey:
    record_id: int
    cert_serial: str
    key: PrivateKey
    cert_der: bytes


def _open_records(km: KeyManager, req: Request, recovery: TokenSession) -> list[RecoveredKey]:
    recovery_key = recovery.private_key(label=RECOVERY_KEY_LABEL)
    out = []
    for rec in archive.records_by_id(km.db.conn, req.records):
        inner = archive.open_outer(rec, km.archive_key_by_label(rec.master_label))
        key = archive.open_inner(rec, inner, recovery_key)
        row = km.db.conn.execute("SELECT der FROM certificates WHERE serial = ?", (rec.cert_serial,)).fetchone()
        out.append(RecoveredKey(rec.id, rec.cert_serial, key, bytes(row[0])))
    return out


def _rotate_pin(km: KeyManager, req: Request, unlocked: Unlocked, officers: list[tuple[str, str, PublicKey]], quorum: int) -> None:
    """A fresh PIN, split among ``officers``: stored as pending, set on the token, activated."""
    conn = km.db.conn
    epoch = custody.epoch(conn) + 1
    if not unlocked.already_rotated:
        new_pin = custody.random_pin()
        sealed = custody.split_and_seal(new_pin, [(n, p) for n, _, p in officers], quorum, epoch)
        pending = {
            "request": req.id,
            "epoch": epoch,
            "quorum": quorum,
            "officers": [[n, u, custody.public_der(p).hex()] for n, u, p in officers],
            "shares": {n: s.hex() for n, s in sealed.items()},
            "sealed_pin": sealing.seal(req.public_key, new_pin.encode(), _pin_context(req.id)).hex(),
        }
        with km.db.transaction():
            km.db.set_meta("pending_split", json.dumps(pending))
        unlocked.session.set_pin(unlocked.pin, new_pin)
        del new_pin
    unlocked.session.close()


def _activate_pending(km: KeyManager, conn: sqlite3.Connection) -> dict[str, Any]:
    pending = _pending(conn)
    assert pending is not None
    officers = [(n, u, custody.load_public(bytes.fromhex(p))) for n, u, p in pending["officers"]]
    sealed = {n: bytes.fromhex(s) for n, s in pending["shares"].items()}
    custody.store_split(conn, officers, sealed, int(pending["epoch"]), int(pending["quorum"]), km.clock())
    conn.execute("DELETE FROM meta WHERE key = 'pending_split'")
    return pending


@dataclass(frozen=True)
class Completion:
    request_id: int
    email: str | None
    keys: list[RecoveredKey]
    code: str | None


def complete_recovery(
    km: KeyManager, request_id: int, deliver: Callable[[list[RecoveredKey]], None] | None, reenable: bool
) -> Completion:
    """With K approvals: open the user's records, deliver them (``deliver`` writes the export
    file) or hold them for re-enrollment under a one-time code; then re-split a new PIN."""
    req = _load(km.db.conn, request_id)
    _check_open(req, km.clock())
    if req.kind is not RequestKind.RECOVERY:
        raise errors.BadInput(f"request {req.id} is a {req.kind.value} request")
    unlocked = _unlock(km, req)
    keys = _open_records(km, req, unlocked.session)
    if deliver is not None:
        deliver(keys)
    officers = [(o.name, o.uri, o.public_key) for o in custody.active_officers(km.db.conn)]
    _rotate_pin(km, req, unlocked, officers, custody.quorum(km.db.conn))
    code = None
    with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, email=req.email, records=req.records) as ch:
        pending = _activate_pending(km, ch.conn)
        if reenable:
            assert req.user_id is not None
            code, code_row = users.issue_code(
                ch.conn, req.user_id, users.CodePurpose.RECOVERY, km.clock(),
                km.config.code_ttl_days, km.config.code_max_attempts, req.id,
            )
            _hold_for_code(ch.conn, code_row, code, keys)
        ch.conn.execute("UPDATE recovery_requests SET status = ? WHERE id = ?", (RequestStatus.COMPLETED.value, req.id))
        ch.details.update(mode="reenable" if reenable else "export", new_epoch=pending["epoch"])
    _destroy_key(km.session, req.key_label)
    return Completion(req.id, req.email, keys, code)


def _code_hold_key(code: str, code_row: int) -> bytes:
    return code_key(code, f"hsmkm-recovered-{code_row}".encode())


def _hold_for_code(conn: sqlite3.Connection, code_row: int, code: str, keys: list[RecoveredKey]) -> None:
    """Keep the recovered keys encrypted under a key derived from the one-time code."""
    hold = _hold_key_cipher(code, code_row)
    for k in keys:
        pkcs8 = k.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        nonce = os.urandom(12)
        conn.execute(
            "INSERT INTO recovered(code_row, archive_id, sealed) VALUES (?, ?, ?)",
            (code_row, k.record_id, nonce + hold.encrypt(nonce, pkcs8, k.cert_serial.encode())),
        )


def _hold_key_cipher(code: str, code_row: int) -> AESGCM:
    return AESGCM(_code_hold_key(code, code_row))


def release_recovered(conn: sqlite3.Connection, code_row: int, code: str, transport_key: bytes) -> list[SealedKey]:
    """At re-enrollment with a recovery code: the held keys, re-sealed for the client."""
    hold = _hold_key_cipher(code, code_row)
    out = []
    for archive_id, sealed in conn.execute(
        "SELECT archive_id, sealed FROM recovered WHERE code_row = ? ORDER BY archive_id", (code_row,)
    ).fetchall():
        serial, cert_der = conn.execute(
            "SELECT a.cert_serial, c.der FROM archive a JOIN certificates c ON c.serial = a.cert_serial WHERE a.id = ?",
            (archive_id,),
        ).fetchone()
        pkcs8 = hold.decrypt(bytes(sealed)[:12], bytes(sealed)[12:], str(serial).encode())
        key = serialization.load_der_private_key(pkcs8, None)
        out.append(seal_key(transport_key, key, bytes(cert_der)))  # type: ignore[arg-type]
    conn.execute("DELETE FROM recovered WHERE code_row = ?", (code_row,))
    return out


def complete_change(km: KeyManager, request_id: int) -> dict[str, Any]:
    """Carry out an approved officer or quorum change: the PIN is rebuilt and re-split."""
    req = _load(km.db.conn, request_id)
    _check_open(req, km.clock())
    if req.kind is RequestKind.RECOVERY:
        raise errors.BadInput(f"request {req.id} is a recovery request")
    current = custody.active_officers(km.db.conn)
    officers = [(o.name, o.uri, o.public_key) for o in current]
    quorum = custody.quorum(km.db.conn)
    p = req.params
    if req.kind is RequestKind.OFFICER_ADD:
        if any(o[0] == p["name"] for o in officers):
            raise errors.AlreadyExists(f"{p['name']} is already an officer")
        officers.append((p["name"], p["uri"], custody.load_public(bytes.fromhex(p["public_key"]))))
    elif req.kind is RequestKind.OFFICER_REMOVE:
        if not any(o[0] == p["name"] for o in officers):
            raise errors.NotFound(f"{p['name']} is not an officer")
        officers = [o for o in officers if o[0] != p["name"]]
        quorum = min(quorum, len(officers))
    elif req.kind is RequestKind.POLICY:
        quorum = int(p["quorum"])
    if not officers:
        raise errors.PolicyViolation("at least one officer must remain")
    if not 1 <= quorum <= len(officers):
        raise errors.PolicyViolation(f"quorum {quorum} must be between 1 and the {len(officers)} officers")
    unlocked = _unlock(km, req)
    _rotate_pin(km, req, unlocked, officers, quorum)
    with km.change(AuditAction.POLICY_CHANGE, id=req.id, kind=req.kind.value, stage="complete") as ch:
        pending = _activate_pending(km, ch.conn)
        ch.conn.execute("UPDATE recovery_requests SET status = ? WHERE id = ?", (RequestStatus.COMPLETED.value, req.id))
        ch.details.update(officers=[o[0] for o in officers], quorum=quorum, new_epoch=pending["epoch"])
    _destroy_key(km.session, req.key_label)
    return {"officers": [o[0] for o in officers], "quorum": quorum}


def list_requests(conn: sqlite3.Connection) -> list[Request]:
    return [_load(conn, int(r[0])) for r in conn.execute("SELECT id FROM recovery_requests ORDER BY id")]
