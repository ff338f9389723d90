"""Archive master key rotation: every record's at-rest layer moved to a new key on the token.

Only the recovery-layer ciphertext passes through memory. Progress is kept in the database,
so a crash at any point leaves a state from which ``rotate`` continues.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pkcs11 import ObjectClass

from hsmkm.km import archive
from hsmkm.km.audit import AuditAction
from hsmkm.km.config import ARCHIVE_KEY_PREFIX
from hsmkm.km.manager import KeyManager

BATCH = 500


@dataclass(frozen=True)
class RotationResult:
    old_label: str
    new_label: str
    records: int


def _next_label(label: str) -> str:
    number = int(label.removeprefix(ARCHIVE_KEY_PREFIX)) if label.startswith(ARCHIVE_KEY_PREFIX) else 1
    return f"{ARCHIVE_KEY_PREFIX}{number + 1}"


def rotate_archive_key(
    km: KeyManager, progress: Callable[[int, int], None] = lambda done, total: None, batch: int = BATCH
) -> RotationResult:
    """Re-seal every archive record under a new archive master key, then destroy the old one."""
    conn = km.db.conn
    state = km.db.get_meta("archive_rotation")
    if state is None:
        old = km.db.get_meta("archive_key_label") or km.config.archive_key_label
        new = _next_label(old)
        # A key left by a run that crashed before recording the rotation was never used.
        if not km.session.has_object(new, ObjectClass.SECRET_KEY):
            km.session.generate_aes_key(new)
        with km.change(AuditAction.ARCHIVE_ROTATE, stage="start", old=old, new=new):
            km.db.set_meta("archive_rotation", json.dumps({"old": old, "new": new}))
            km.db.set_meta("archive_key_label", new)
    else:
        labels = json.loads(state)
        old, new = labels["old"], labels["new"]
    total = int(conn.execute("SELECT COUNT(*) FROM archive WHERE master_label = ?", (old,)).fetchone()[0])
    done = 0
    if total:
        old_key, new_key = km.archive_key_by_label(old), km.archive_key_by_label(new)
        while True:
            rows = conn.execute(
                "SELECT id, user_id, cert_serial, format_version, sealed FROM archive WHERE master_label = ? "
                "ORDER BY id LIMIT ?",
                (old, batch),
            ).fetchall()
            if not rows:
                break
            updates = []
            for rid, uid, serial, version, sealed in rows:
                aad = archive.record_aad(uid, serial, version)
                updates.append((new_key.encrypt_gcm(old_key.decrypt_gcm(bytes(sealed), aad), aad), new, rid))
            with km.change(AuditAction.ARCHIVE_ROTATE, stage="batch", old=old, new=new,
                           first=rows[0][0], last=rows[-1][0], count=len(rows)) as ch:
                ch.conn.executemany("UPDATE archive SET sealed = ?, master_label = ? WHERE id = ?", updates)
            done += len(rows)
            progress(done, total)
    km.session.destroy(old, ObjectClass.SECRET_KEY)
    with km.change(AuditAction.ARCHIVE_ROTATE, stage="done", old=old, new=new, records=done):
        conn.execute("DELETE FROM meta WHERE key = 'archive_rotation'")
    return RotationResult(old, new, done)
