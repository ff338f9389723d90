"""Token-gated recovery: a request naming records, K officer approvals made on the officers'
own tokens, each opening only the shares of those records; completion rebuilds exactly those
records' keys (custody rule 4).

The same request/approve machinery gates changes of the officers and of the quorum (shares
redistributed on the officers' side) and the migration of a first-release archive.
Completion is one-use: a conditional transition open -> completing -> completed, so however
many completions of one request run at once, one completes.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import ObjectClass

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.keys.pkcs11 import TokenSession
from hsmkm.km import archive, custody, epochs, officer_side, request_content, shamir, users
from hsmkm.store.database import Database
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.officer_side import NewOfficer, RecordIdentity
from hsmkm.km.request_content import Content
from hsmkm.protocol import SealedKey, code_key, seal_key

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


_load = load  # the name the first release's callers used


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
                user = users.find_user(ch.tx, email)
                user_id = user.id
                found = archive.records_for_user(ch.tx, user.id)
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
        _destroy_key(km.session, label)
        raise
    return load(km.db.conn, rid)


def _destroy_key(session: TokenSession, label: str) -> None:
    session.destroy(label, ObjectClass.PRIVATE_KEY)
    session.destroy(label, ObjectClass.PUBLIC_KEY)


def content_for_officer(km: KeyManager, request_id: int) -> Content:
    """What an officer is shown before approving: rebuilt from the rows, each record's
    certificate checked against the CA certificate's signature."""
    return request_content.build(km.db.conn, request_id, km.ca_cert)


def _check_expiry(req: Request, content: Content, now: datetime) -> None:
    """Expiry as signed (the content is rebuilt from the rows, and the approvals cover it)."""
    if now > datetime.fromisoformat(content.expires):
        raise errors.PolicyViolation(f"request {req.id} expired at {content.expires}")


def _check_open(req: Request, content: Content, now: datetime) -> None:
    if req.status is not RequestStatus.OPEN:
        raise errors.PolicyViolation(f"request {req.id} is {req.status.value}")
    _check_expiry(req, content, now)


# --- approval (the officer's process) ------------------------------------------------------------


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
    _check_open(req, shown, km.clock())
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


# --- one-use completion ---------------------------------------------------------------------------


def _start_time(pid: int) -> str:
    """The process's start time (Linux /proc), so a reused pid is not taken for the claimant."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _alive(claimant: str) -> bool:
    host, pid, started = (claimant.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return started in ("-", _start_time(int(pid)))


def claim(km: KeyManager, req: Request) -> str:
    """open -> completing, for this process only; a claim left by a dead process is taken over."""
    me = _me()
    with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, stage="claim") as ch:
        row = ch.conn.execute(
            "SELECT r.status, c.claimed_by FROM recovery_requests r LEFT JOIN request_claims c ON c.request_id = r.id "
            "WHERE r.id = ?", (req.id,)
        ).fetchone()
        status, holder = RequestStatus(row[0]), row[1]
        if status is RequestStatus.COMPLETING and holder is not None and _alive(str(holder)):
            raise errors.PolicyViolation(f"request {req.id} is being completed by another process")
        if status not in (RequestStatus.OPEN, RequestStatus.COMPLETING):
            raise errors.PolicyViolation(f"request {req.id} is {status.value}")
        cur = ch.conn.execute(
            "UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ?",
            (RequestStatus.COMPLETING.value, req.id, status.value),
        )
        if cur.rowcount != 1:
            raise errors.PolicyViolation(f"request {req.id} is being completed by another process")
        ch.conn.execute(
            "INSERT INTO request_claims(request_id, claimed_by) VALUES (?, ?) "
            "ON CONFLICT(request_id) DO UPDATE SET claimed_by = excluded.claimed_by",
            (req.id, me),
        )
        ch.details["taken_over"] = holder if status is RequestStatus.COMPLETING else None
    return me


def release(km: KeyManager, req: Request, me: str) -> None:
    """completing -> open after a failed completion of ours."""
    with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, stage="released") as ch:
        conn = ch.conn
        conn.execute(
            "UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ? AND "
            "EXISTS (SELECT 1 FROM request_claims WHERE request_id = ? AND claimed_by = ?)",
            (RequestStatus.OPEN.value, req.id, RequestStatus.COMPLETING.value, req.id, me),
        )
        conn.execute("DELETE FROM request_claims WHERE request_id = ? AND claimed_by = ?", (req.id, me))


def _finish(conn: sqlite3.Connection, req: Request, me: str) -> None:
    """completing -> completed, only for the holder of the claim (inside the final transaction)."""
    cur = conn.execute(
        "UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ? AND "
        "EXISTS (SELECT 1 FROM request_claims WHERE request_id = ? AND claimed_by = ?)",
        (RequestStatus.COMPLETED.value, req.id, RequestStatus.COMPLETING.value, req.id, me),
    )
    if cur.rowcount != 1:
        raise errors.PolicyViolation(f"request {req.id} was taken over by another completion; nothing was committed")
    conn.execute("DELETE FROM request_claims WHERE request_id = ?", (req.id,))
    conn.execute("DELETE FROM reshares WHERE request_id = ?", (req.id,))


@dataclass(frozen=True)
class RecoveredKey:
    record_id: int
    cert_serial: str
    key: PrivateKey
    cert_der: bytes


def _request_key(km: KeyManager, req: Request) -> PrivateKey:
    try:
        return km.session.private_key(label=req.key_label)
    except errors.KeyNotFound:
        raise errors.PolicyViolation(
            f"request {req.id}'s key is gone from the KM token: the request was completed or cancelled"
        ) from None


def _record_keys(km: KeyManager, req: Request, content: Content, approvals: Sequence[Approval]) -> dict[int, bytes]:
    """Each approved record's key, from K officers' shares opened with the request's key."""
    request_key = _request_key(km, req)
    wanted = {v.identity.record_id: v.identity for v in content.records}
    shares: dict[int, list[shamir.Share]] = {rid: [] for rid in wanted}
    for a in approvals:
        seen = set()
        for e in officer_side.open_approval(request_key, a.blob, req.id, a.officer, content.canonical):
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
    for rec in archive.records_by_id(km.db.reader(), [v.identity.record_id for v in content.records]):
        master = masters.get(rec.master_label)
        if master is None:
            master = masters[rec.master_label] = km.archive_key_by_label(rec.master_label)
        inner = archive.open_outer(rec, master)
        key = archive.open_inner(rec, inner, record_keys[rec.id])
        row = km.db.conn.execute("SELECT der FROM certificates WHERE serial = ?", (rec.cert_serial,)).fetchone()
        out.append(RecoveredKey(rec.id, rec.cert_serial, key, bytes(row[0])))
    return out


@dataclass(frozen=True)
class Completion:
    request_id: int
    email: str | None
    keys: list[RecoveredKey]
    code: str | None


def _no_pause() -> None:
    return None


def complete_recovery(
    km: KeyManager,
    request_id: int,
    deliver: Callable[[list[RecoveredKey]], None] | None,
    reenable: bool,
    before_commit: Callable[[str], None] | None = None,
    after_claim: Callable[[], None] = _no_pause,
) -> Completion:
    """With K approvals: open exactly the approved records, deliver them (``deliver`` writes the
    export file) or hold them for re-enrollment under a one-time code, which ``before_commit``
    may write to its destination before the commit. ``after_claim`` is a seam for tests."""
    req = load(km.db.conn, request_id)
    if req.kind is not RequestKind.RECOVERY:
        raise errors.BadInput(f"request {req.id} is a {req.kind.value} request")
    content = request_content.build(km.db.conn, request_id, None)
    approvals = verified_approvals(km, req, content)
    _check_expiry(req, content, km.clock())  # whatever the status says: a claim can be forged
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
                    ch.tx, req.user_id, users.CodePurpose.RECOVERY, km.clock(),
                    km.config.code_ttl_days, km.config.code_max_attempts, req.id,
                )
                _hold_for_code(ch.conn, code_row, code, keys)
                if before_commit is not None:
                    before_commit(code)
            _finish(ch.conn, req, me)
            ch.details.update(mode="reenable" if reenable else "export")
    except BaseException:
        release(km, req, me)
        raise
    _destroy_key(km.session, req.key_label)
    return Completion(req.id, req.email, keys, code)


def record_serials(db: Database, request_id: int) -> set[str]:
    """The certificate serials of the records a recovery request names."""
    req = load(db.conn, request_id)
    return {r.cert_serial for r in archive.records_by_id(db.reader(), req.records)}


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


# --- officer and quorum changes --------------------------------------------------------------------


def complete_change(
    km: KeyManager, request_id: int, officer_key: Callable[[str], PrivateKey], after_claim: Callable[[], None] = _no_pause
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
    _check_expiry(req, content, km.clock())  # whatever the status says: a claim can be forged
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
            _finish(ch.conn, req, me)
            ch.details.update(officers=[o.name for o in new.officers], quorum=new.quorum, new_epoch=new.number,
                              records=len(covered))
    except BaseException:
        release(km, req, me)
        raise
    _destroy_key(km.session, req.key_label)
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


def list_requests(conn: sqlite3.Connection) -> list[Request]:
    return [load(conn, int(r[0])) for r in conn.execute("SELECT id FROM recovery_requests ORDER BY id")]
