"""The append-only audit log: entries hash-chained and MAC'd with a key on the KM token.

Each entry's hash covers the previous entry's hash and its own content; its MAC is an
HMAC-SHA256 of the hash computed on the token. The chain head (last seq and hash) is kept,
MAC'd, beside the entries, so that removing entries from the end is found too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from hsmkm import errors
from hsmkm.clock import Clock

GENESIS = b"\x00" * 32


class AuditAction(str, Enum):
    INIT = "init"
    USER_ADD = "user.add"
    USER_REENABLE = "user.reenable"
    USER_REVOKE = "user.revoke"
    CODE_REJECTED = "code.rejected"
    ENROLL = "enroll"
    ISSUE = "cert.issue"
    CA_IMPORT = "ca.import"
    CRL_PUBLISH = "crl.publish"
    RECOVERY_REQUEST = "recovery.request"
    RECOVERY_APPROVE = "recovery.approve"
    RECOVERY_COMPLETE = "recovery.complete"
    RECOVERY_CANCEL = "recovery.cancel"
    OFFICER_ADD = "officer.add"
    OFFICER_REMOVE = "officer.remove"
    POLICY_CHANGE = "recovery.policy"
    ARCHIVE_ROTATE = "archive.rotate"
    TOKEN_REPAIR = "token.repair"


Mac = Callable[[bytes], bytes]



@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    details: dict[str, Any]


@dataclass(frozen=True)
class AuditReport:
    entries: int
    ok: bool
    first_bad: int | None = None
    problem: str | None = None


def _entry_hash(prev: bytes, seq: int, at: str, actor: str, action: str, details: str) -> bytes:
    body = json.dumps([seq, at, actor, action, details], separators=(",", ":")).encode()
    return hashlib.sha256(b"hsmkm-audit-v1\x00" + prev + body).digest()


def _head_bytes(seq: int, digest: bytes) -> bytes:
    return b"hsmkm-audit-head-v1\x00" + seq.to_bytes(8, "big") + digest


class AuditLog:
    """Appends to and verifies the audit chain in the KM database."""

    def __init__(self, conn: sqlite3.Connection, mac: Mac, clock: Clock) -> None:
        self._conn = conn
        self._mac = mac
        self._clock = clock

    def append(self, actor: str, action: AuditAction, details: dict[str, Any]) -> int:
        """Add one entry; call inside the state change's transaction. Returns its seq."""
        row = self._conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (1, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
        at = self._clock().isoformat(timespec="microseconds")
        text = json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)
        digest = _entry_hash(prev, seq, at, actor, action.value, text)
        mac = self._mac(digest)
        self._conn.execute(
            "INSERT INTO audit(seq, at, actor, action, details, prev_hash, hash, mac) VALUES (?,?,?,?,?,?,?,?)",
            (seq, at, actor, action.value, text, prev, digest, mac),
        )
        head_mac = self._mac(_head_bytes(seq, digest))
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES ('audit_head', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (f"{seq}:{digest.hex()}:{head_mac.hex()}",),
        )
        return seq

    def entries(self, action: AuditAction | None = None) -> list[AuditEntry]:
        sql = "SELECT seq, at, actor, action, details FROM audit"
        args: tuple[Any, ...] = ()
        if action is not None:
            sql += " WHERE action = ?"
            args = (action.value,)
        return [
            AuditEntry(r[0], r[1], r[2], r[3], json.loads(r[4]))
            for r in self._conn.execute(sql + " ORDER BY seq", args)
        ]

    def verify(self) -> AuditReport:
        """Walk the whole chain: hashes, links, MACs, sequence and the MAC'd head."""
        prev = GENESIS
        expected = 1
        count = 0
        for seq, at, actor, action, details, prev_hash, digest, mac in self._conn.execute(
            "SELECT seq, at, actor, action, details, prev_hash, hash, mac FROM audit ORDER BY seq"
        ):
            count += 1
            if seq != expected:
                return AuditReport(count, False, expected, f"entry {expected} is missing")
            if bytes(prev_hash) != prev:
                return AuditReport(count, False, seq, f"entry {seq} does not link to entry {seq - 1}")
            recomputed = _entry_hash(prev, seq, at, actor, action, details)
            if not hmac.compare_digest(recomputed, bytes(digest)):
                return AuditReport(count, False, seq, f"entry {seq} was altered")
            if not hmac.compare_digest(self._mac(recomputed), bytes(mac)):
                return AuditReport(count, False, seq, f"entry {seq} has a bad MAC")
            prev = recomputed
            expected += 1
        head = self._conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
        if head is None:
            if count:
                return AuditReport(count, False, count, "the audit head is missing")
            return AuditReport(0, True)
        try:
            h_seq_s, h_digest_s, h_mac_s = str(head[0]).split(":")
            h_seq, h_digest, h_mac = int(h_seq_s), bytes.fromhex(h_digest_s), bytes.fromhex(h_mac_s)
        except ValueError:
            return AuditReport(count, False, count, "the audit head is malformed")
        if not hmac.compare_digest(self._mac(_head_bytes(h_seq, h_digest)), h_mac):
            return AuditReport(count, False, h_seq, "the audit head has a bad MAC")
        if h_seq != count or not hmac.compare_digest(h_digest, prev):
            first = min(h_seq, count) + 1
            return AuditReport(count, False, first, f"the log ends at entry {count} but its head names entry {h_seq}")
        return AuditReport(count, True)

    def verify_or_raise(self) -> int:
        report = self.verify()
        if not report.ok:
            raise errors.AuditChainBroken(f"audit chain broken at entry {report.first_bad}: {report.problem}")
        return report.entries
