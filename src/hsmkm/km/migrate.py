"""``archive migrate``: a first-release archive (records RSA-OAEP-wrapped to one recovery key
on a recovery token whose PIN is split among the officers) moved to per-record K-of-N shares.

One last quorum-approved use of the recovery token: K officers approve a migration request
with their PIN shares, the PIN is rebuilt in this process, and each record is opened and
re-sealed under a fresh record key split among the officers, one record at a time, in
batches that each commit (a crash leaves a state from which the command continues). Then the
recovery key is destroyed on the token and its public key dropped from the database.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from hsmkm import errors
from hsmkm.keys.token import ObjectKind, Token
from hsmkm.km import archive, custody, epochs, officer_side, request_content
from hsmkm.km.audit import AuditAction
from hsmkm.km.config import RECOVERY_KEY_LABEL
from hsmkm.km.manager import KeyManager, open_token
from hsmkm.km.officer_side import RecordIdentity
from hsmkm.km.recovery.approvals import Approval, verified_approvals
from hsmkm.km.recovery.claims import claim, finish, release
from hsmkm.km.recovery.requests import Request, RequestKind, check_expiry, destroy_request_key, load, request_key

BATCH = 200


@dataclass(frozen=True)
class MigrationResult:
    request_id: int
    records: int
    recovery_key_destroyed: bool


def pending_records(km: KeyManager) -> int:
    with km.db.read() as tx:
        return tx.archive.count(format_version=archive.FORMAT_V1)


def _open_recovery_token(
    km: KeyManager, req: Request, approvals: list[Approval], content: request_content.Content
) -> Token:
    """The old recovery token, logged in with the PIN the approvals' shares rebuild."""
    ref = km.config.recovery_token
    if ref is None:
        raise errors.NotFound("the KM's configuration names no recovery token to migrate from")
    key = request_key(km, req)
    shares = [officer_side.open_pin_share(key, a.blob, req.id, a.officer, content.canonical) for a in approvals]
    pin = custody.combine_pin(shares)
    del shares
    try:
        return open_token(ref, pin, km.config.softhsm_config)
    except errors.WrongPin:
        raise errors.SignatureInvalid("the approvals do not rebuild the recovery token's PIN") from None
    finally:
        del pin


def migrate(
    km: KeyManager,
    request_id: int,
    progress: Callable[[int, int], None] = lambda done, total: None,
    batch: int = BATCH,
    after_batch: Callable[[int], None] = lambda done: None,
) -> MigrationResult:
    """Carry out an approved migration request (again, after a crash: it continues)."""
    with km.db.read() as tx:
        req = load(tx, request_id)
        if req.kind is not RequestKind.MIGRATE:
            raise errors.BadInput(f"request {req.id} is a {req.kind.value} request")
        if km.config.recovery_token is None:
            raise errors.PolicyViolation("this KM has no recovery token: its archive is already per-record")
        content = request_content.build(tx, request_id, None)
    approvals = verified_approvals(km, req, content)
    check_expiry(req, content, km.clock())  # whatever the status says
    me = claim(km, req)
    try:
        total = pending_records(km)
        done = 0
        destroyed = False
        rec_session = None
        if total:
            rec_session = _open_recovery_token(km, req, approvals, content)
            recovery_key = rec_session.private_key(label=RECOVERY_KEY_LABEL)
            while True:
                with km.db.read() as tx:
                    rows = archive.records_by_id(tx, tx.archive.ids_in_format(archive.FORMAT_V1, batch))
                    sharing = epochs.sharing(tx)
                if not rows:
                    break
                master = km.archive_key
                updates = []
                masters = {label: km.archive_key_by_label(label) for label in {r.master_label for r in rows}}
                for rec in rows:
                    inner_v1 = archive.open_outer(rec, masters[rec.master_label])
                    pkcs8 = archive.open_inner_v1(rec, inner_v1, recovery_key)
                    record_key = os.urandom(32)
                    inner = archive.seal_inner(record_key, pkcs8, rec.user_id, rec.cert_serial)
                    del pkcs8
                    sealed_shares = archive.split_and_seal_key(
                        record_key, RecordIdentity(rec.id, rec.user_id, rec.cert_serial), sharing
                    )
                    del record_key
                    aad = archive.record_aad(rec.user_id, rec.cert_serial, archive.FORMAT_VERSION)
                    updates.append((rec.id, master.encrypt_gcm(inner, aad), sealed_shares))
                with km.change(
                    AuditAction.ARCHIVE_MIGRATE,
                    id=req.id,
                    stage="batch",
                    first=rows[0].id,
                    last=rows[-1].id,
                    count=len(rows),
                ) as ch:
                    if epochs.sharing_numbers(ch.tx) != tuple(e.number for e in sharing):
                        raise errors.PolicyViolation("the officers changed during the migration; run it again")
                    for rid, sealed, sealed_shares in updates:
                        # conditional on the record still being in the old format (a re-run skips it)
                        if ch.tx.archive.reformat(rid, archive.FORMAT_V1, archive.FORMAT_VERSION, master.label, sealed):
                            ch.tx.shares.drop_record(rid)
                            archive.store_shares(ch.tx, rid, sealed_shares)
                done += len(rows)
                progress(done, total)
                after_batch(done)
        with km.db.read() as tx:
            recovery_public_key = tx.meta.get("recovery_public_key")
        if rec_session is None and recovery_public_key is not None:
            # nothing left to migrate (a run that crashed after its last batch): finish with the key
            rec_session = _open_recovery_token(km, req, approvals, content)
        if rec_session is not None:
            destroyed = bool(rec_session.destroy(RECOVERY_KEY_LABEL, ObjectKind.PRIVATE_KEY))
            rec_session.destroy(RECOVERY_KEY_LABEL, ObjectKind.PUBLIC_KEY)
            rec_session.close()
        with km.change(
            AuditAction.ARCHIVE_MIGRATE, id=req.id, stage="done", records=done, recovery_key_destroyed=destroyed
        ) as ch:
            ch.tx.meta.delete("recovery_public_key")
            # the PIN shares are void now that the key they guarded is gone
            ch.tx.officers.void_pin_shares()
            finish(ch.tx, req, me)
    except BaseException:
        release(km, req, me)
        raise
    destroy_request_key(km.session, req.key_label)
    return MigrationResult(req.id, done, destroyed)
