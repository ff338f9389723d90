"""Publishing CRLs: numbered in the database, signed on the token, renamed into HOME/pub/crl/.

CRL numbers are drawn in a transaction, so they strictly increase across crashes and
concurrent publishers; the last one drawn is anchored on the KM token with the audit head,
so a database rolled back to an earlier number is refused (``km.anchor``) rather than
drawing a number twice. A file lock and a number check keep an older CRL from replacing a
newer one, and the result says so when that happened.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path

from hsmkm import errors
from hsmkm.atomic import write_atomic
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.der import der_time_of_iso
from hsmkm.x509.crl import RevocationReason, encode_rows, sign_crl
from hsmkm.x509.crlparse import parse_crl


class CrlKind(str, Enum):
    FULL = "full"
    DELTA = "delta"


@dataclass(frozen=True)
class Published:
    kind: CrlKind
    number: int
    base: int | None
    entries: int
    path: Path
    this_update: datetime
    next_update: datetime
    size: int
    installed: bool = True  # False: a CRL with a number at least this one's was there already


def _rows(conn: sqlite3.Connection, after_seq: int, upto_seq: int) -> Iterator[tuple[int, bytes, RevocationReason]]:
    """(serial, DER revocation time, reason) of the revocations in (after_seq, upto_seq], in
    the order they happened (the revoked_seq index gives them without a sort)."""
    cur = conn.execute(
        "SELECT serial, revoked_at, reason FROM certificates WHERE revoked_seq > ? AND revoked_seq <= ? "
        "ORDER BY revoked_seq",
        (after_seq, upto_seq),
    )
    reasons = {r.value: r for r in RevocationReason}
    while True:
        rows = cur.fetchmany(10_000)
        if not rows:
            return
        for serial, at, reason in rows:
            yield int(serial, 16), der_time_of_iso(at), reasons[reason]


def publish_crl(km: KeyManager, kind: CrlKind = CrlKind.FULL, next_update_hours: int | None = None) -> Published:
    """Build, sign on the token and publish a full or delta CRL."""
    now = km.clock().replace(microsecond=0)
    next_update = now + timedelta(hours=next_update_hours or km.config.crl_next_update_hours)
    _ = km.ca_cert  # a damaged CA certificate is refused before anything is committed
    with km.change(AuditAction.CRL_PUBLISH, kind=kind.value) as ch:
        conn = ch.conn
        number = int(km.db.get_meta("crl_number") or 0) + 1
        km.db.set_meta("crl_number", str(number))
        upto = int(conn.execute("SELECT COALESCE(MAX(revoked_seq), 0) FROM certificates").fetchone()[0])
        base = None
        after = 0
        if kind is CrlKind.DELTA:
            row = conn.execute(
                "SELECT number, revoked_seq_upto FROM crls WHERE kind = 'full' ORDER BY number DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise errors.BadInput("publish a full CRL before a delta CRL")
            base, after = int(row[0]), int(row[1])
        count = int(conn.execute(
            "SELECT COUNT(*) FROM certificates WHERE revoked_seq > ? AND revoked_seq <= ?", (after, upto)
        ).fetchone()[0])
        conn.execute(
            "INSERT INTO crls(number, kind, base, this_update, next_update, entries, revoked_seq_upto) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (number, kind.value, base, now.isoformat(), next_update.isoformat(), count, upto),
        )
        ch.details.update(number=number, base=base, entries=count, next_update=next_update.isoformat())
    # The number is committed: a crash from here on leaves a gap, never a reused number.
    der = sign_crl(
        km.ca_cert, km.ca_key, b"".join(encode_rows(_rows(km.db.conn, after, upto))), number, now, next_update,
        delta_of=base, freshest_url=km.config.delta_crl_url if kind is CrlKind.FULL else None,
    )
    path = km.home.crl_dir / f"{kind.value}.crl"
    installed = _install(path, der, number)
    return Published(kind, number, base, count, path, now, next_update, len(der), installed)


def _install(path: Path, der: bytes, number: int) -> bool:
    """Rename the CRL into place unless the one there has a number at least ``number``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".publish.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                current = parse_crl(path.read_bytes()).number or 0
            except errors.MalformedInput:
                current = 0
            if current >= number:
                return False  # a concurrent publisher already put a newer CRL there
        write_atomic(path, der, 0o644)
    return True
