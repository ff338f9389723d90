"""Archive master key rotation: every record's at-rest layer moved to a new key on the token.

Only the recovery-layer ciphertext passes through memory. Progress is kept in the database,
so a crash at any point leaves a state from which ``rotate`` continues. Enrollment seals
outside the database's write lock and checks the current master key inside its commit
(re-sealing if a rotation started meanwhile), so the old key is destroyed only inside a
write transaction that finds no record left under it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from hsmkm import errors
from hsmkm.keys.token import ObjectKind, Token
from hsmkm.km import archive
from hsmkm.km.audit import AuditAction
from hsmkm.km.config import ARCHIVE_KEY_PREFIX
from hsmkm.km.manager import KeyManager

ROTATION_KEY = "archive_rotation"  # meta: the rotation under way, if any
ARCHIVE_LABEL_KEY = "archive_key_label"  # meta: the current archive master key
BATCH = 500
_PROBE_AAD = b"hsmkm-archive-key-probe"


@dataclass(frozen=True)
class RotationResult:
    old_label: str
    new_label: str
    records: int


def _next_label(label: str) -> str:
    number = int(label.removeprefix(ARCHIVE_KEY_PREFIX)) if label.startswith(ARCHIVE_KEY_PREFIX) else 1
    return f"{ARCHIVE_KEY_PREFIX}{number + 1}"


def master_key_is_sound(session: Token, label: str) -> bool:
    """Whether the key is one whole archive master key: its attributes, and a round trip.

    A kill while SoftHSM2 writes a new key's object (it rewrites the file once per
    attribute) leaves an object with only some of its attributes; such a key must never
    become the master key.
    """
    try:
        attrs = session.attributes(label, ObjectKind.SECRET_KEY)
        if attrs.key_type != "AES" or not attrs.token or attrs.sensitive is not True or attrs.extractable is not False:
            return False
        if not {"encrypt", "decrypt"} <= set(attrs.usages):
            return False
        key = session.secret_key(label)
        probe = os.urandom(32)
        return key.decrypt_gcm(key.encrypt_gcm(probe, _PROBE_AAD), _PROBE_AAD) == probe
    except errors.HsmkmError:
        return False


def _fresh_master_key(km: KeyManager, label: str) -> None:
    """A whole key under ``label``: one left by a crashed run is kept if sound, else replaced."""
    if km.session.has_object(label, ObjectKind.SECRET_KEY):
        if master_key_is_sound(km.session, label):
            return
        km.session.destroy(label, ObjectKind.SECRET_KEY)
    km.session.generate_aes_key(label)
    if not master_key_is_sound(km.session, label):
        raise errors.TokenError(f"token '{km.session.label}': the new archive key '{label}' does not work")


def _migrate(km: KeyManager, old: str, new: str, batch: int, progress: Callable[[int], None]) -> int:
    old_key, new_key = km.archive_key_by_label(old), km.archive_key_by_label(new)
    done = 0
    while True:
        rows = km.db.reader().archive.under_label(old, batch)
        if not rows:
            return done
        updates = []
        for r in rows:
            aad = archive.record_aad(r.user_id, r.cert_serial, r.format_version)
            updates.append((r.id, old, new, new_key.encrypt_gcm(old_key.decrypt_gcm(r.sealed, aad), aad)))
        with km.change(
            AuditAction.ARCHIVE_ROTATE,
            stage="batch",
            old=old,
            new=new,
            first=rows[0].id,
            last=rows[-1].id,
            count=len(rows),
        ) as ch:
            # Only rows still under the old key: a concurrent writer may have moved one.
            ch.tx.archive.reseal(updates)
        done += len(rows)
        progress(done)


def rotate_archive_key(
    km: KeyManager, progress: Callable[[int, int], None] = lambda done, total: None, batch: int = BATCH
) -> RotationResult:
    """Re-seal every archive record under a new archive master key, then destroy the old one."""
    state = km.db.reader().meta.get(ROTATION_KEY)
    if state is None:
        old = km.db.reader().meta.get(ARCHIVE_LABEL_KEY) or km.config.archive_key_label
        new = _next_label(old)
        # A key left by a run that crashed before recording the rotation was never used.
        _fresh_master_key(km, new)
        with km.change(AuditAction.ARCHIVE_ROTATE, stage="start", old=old, new=new) as ch:
            ch.tx.meta.set(ROTATION_KEY, json.dumps({"old": old, "new": new}))
            ch.tx.meta.set(ARCHIVE_LABEL_KEY, new)
    else:
        labels = json.loads(state)
        old, new = labels["old"], labels["new"]
    total = km.db.reader().archive.count(labels=[old])
    done = 0
    old_exists = km.session.has_object(old, ObjectKind.SECRET_KEY)
    while old_exists:
        done += _migrate(km, old, new, batch, _after(done, total, progress))
        # The old key goes only when a write transaction sees no record under it: an
        # enrollment that sealed under it and commits later re-seals under the new key.
        with km.db.write() as tx:
            if tx.archive.count(labels=[old]):
                continue
            km.session.destroy(old, ObjectKind.SECRET_KEY)
            old_exists = False
    _check_no_orphans(km)
    with km.change(AuditAction.ARCHIVE_ROTATE, stage="done", old=old, new=new, records=done) as ch:
        ch.tx.meta.delete(ROTATION_KEY)
    return RotationResult(old, new, done)


def _after(base: int, total: int, progress: Callable[[int, int], None]) -> Callable[[int], None]:
    """A batch's progress callback: its count reported on top of the ``base`` records before it."""
    return lambda n: progress(base + n, max(total, base + n))


def _check_no_orphans(km: KeyManager) -> None:
    """Every archive record's master key is on the token (none refers to a destroyed key)."""
    labels = km.db.reader().archive.labels()
    missing = [label for label in labels if not km.session.has_object(label, ObjectKind.SECRET_KEY)]
    if missing:
        count = km.db.reader().archive.count(labels=missing)
        raise errors.TokenError(
            f"{count} archive record(s) are sealed under key(s) no longer on the token: {', '.join(missing)}"
        )
