"""The append-only audit log: entries hash-chained and MAC'd with a key on the KM token.

Each entry's hash covers the previous entry's hash and its own content; its MAC is an
HMAC-SHA256 of the hash computed on the token. The chain head (last seq and hash) is kept,
MAC'd, beside the entries, and an append refuses unless that head names the last entry, so
no ordinary state change writes over a cut. Outside the database the head is anchored on
the KM token (``km.anchor``) and in signed checkpoints (``km.checkpoint``); ``verify``
compares the log's content with both, so a cut or a rollback is found even when the
database's own head was put back in step with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hsmkm import errors
from hsmkm.clock import Clock
from hsmkm.store.repos.audit import AuditRow
from hsmkm.store.tx import Tx

GENESIS = b"\x00" * 32


class AuditAction(str, Enum):
    INIT = "init"
    USER_ADD = "user.add"
    USER_REENABLE = "user.reenable"
    USER_REVOKE = "user.revoke"
    CODE_REJECTED = "code.rejected"
    ENROLL = "enroll"
    ENROLL_SIGN = "enroll.sign"  # EST simpleenroll: the signing stage of an enrollment
    ENROLL_KEY = "enroll.key"  # EST serverkeygen: the encryption key stage
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
    ARCHIVE_MIGRATE = "archive.migrate"
    TOKEN_REPAIR = "token.repair"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    AUDIT_ROLLBACK_ACCEPTED = "audit.rollback-accepted"


Mac = Callable[[bytes], bytes]
Guard = Callable[[Tx], None]


class FindingSource(str, Enum):
    """Which check found a problem."""

    CHAIN = "chain"  # the entries' own hashes, links and MACs
    HEAD = "head"  # the MAC'd head in the database
    ANCHOR = "anchor"  # the head anchored on the KM token
    CHECKPOINT = "checkpoint"  # a signed checkpoint kept outside the KM


@dataclass(frozen=True)
class Head:
    """A point in the chain: entry ``seq`` and its hash."""

    seq: int
    digest: bytes


@dataclass(frozen=True)
class Witness:
    """What an anchor or a checkpoint says the log holds: entry ``seq`` with ``digest``, and
    that CRL numbers up to ``crl_number`` were drawn."""

    source: FindingSource
    seq: int
    digest: bytes
    crl_number: int
    name: str  # for messages: "the token's anchor", "the checkpoint of 2026-…"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Finding:
    entry: int
    problem: str
    source: FindingSource


@dataclass(frozen=True)
class AuditReport:
    entries: int
    ok: bool
    first_bad: int | None = None
    problem: str | None = None
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    checked: tuple[FindingSource, ...] = field(default_factory=tuple)


def _entry_hash(prev: bytes, seq: int, at: str, actor: str, action: str, details: str) -> bytes:
    body = json.dumps([seq, at, actor, action, details], separators=(",", ":")).encode()
    return hashlib.sha256(b"hsmkm-audit-v1\x00" + prev + body).digest()


def _head_bytes(seq: int, digest: bytes) -> bytes:
    return b"hsmkm-audit-head-v1\x00" + seq.to_bytes(8, "big") + digest


def crl_number_of(tx: Tx) -> int:
    """The last CRL number the database says was drawn (0 before the first)."""
    return tx.audit.crl_number()


class AuditLog:
    """Appends to and verifies the audit chain in the KM database.

    ``guard`` runs before the first append on this object, inside the caller's transaction:
    the KM passes the check against the token's anchor there.
    """

    def __init__(self, tx: Tx, mac: Mac, clock: Clock, guard: Guard | None = None) -> None:
        self._tx = tx
        self._mac = mac
        self._clock = clock
        self._guard = guard
        self._head: Head | None = None  # the head as checked or last written in this transaction
        self._checked = False
        self.appended: Head | None = None

    def _stored_head(self) -> Head | None:
        """The last entry, after checking that the MAC'd head in the database names it."""
        # The head row is read locked: whoever holds it owns the next seq (SQLite's write
        # transaction holds the whole database; a row-locking backend holds this row).
        meta = self._tx.audit.head(lock=self._tx.writable)
        row = self._tx.audit.last()
        if row is None and meta is None:
            return None
        broken = "the audit log does not end where its head says; run 'hsmkm audit verify'"
        if row is None or meta is None:
            raise errors.AuditChainBroken(broken)
        try:
            h_seq_s, h_digest_s, h_mac_s = meta.split(":")
            h_seq, h_digest, h_mac = int(h_seq_s), bytes.fromhex(h_digest_s), bytes.fromhex(h_mac_s)
        except ValueError:
            raise errors.AuditChainBroken("the audit head is malformed; run 'hsmkm audit verify'") from None
        if not hmac.compare_digest(self._mac(_head_bytes(h_seq, h_digest)), h_mac):
            raise errors.AuditChainBroken("the audit head has a bad MAC; run 'hsmkm audit verify'")
        if h_seq != row[0] or not hmac.compare_digest(h_digest, row[1]):
            raise errors.AuditChainBroken(
                f"the audit log ends at entry {row[0]} but its head names entry {h_seq}; run 'hsmkm audit verify'"
            )
        return Head(h_seq, h_digest)

    def check(self) -> Head | None:
        """Refuse (AuditChainBroken) unless the head and the guard agree with the log; once per
        transaction. Returns the head an append would follow."""
        if not self._checked:
            self._head = self._stored_head()
            if self._guard is not None:
                self._guard(self._tx)
            self._checked = True
        return self._head

    def append(self, actor: str, action: AuditAction, details: dict[str, Any]) -> int:
        """Add one entry; call inside the state change's transaction. Returns its seq."""
        return self.append_many([(actor, action, details)])

    def append_many(self, entries: Sequence[tuple[str, AuditAction, dict[str, Any]]]) -> int:
        """Add entries in order (one batched insert); call inside the state change's
        transaction. Returns the last one's seq."""
        head = self.check()
        seq, prev = (0, GENESIS) if head is None else (head.seq, head.digest)
        rows: list[AuditRow] = []
        for actor, action, details in entries:
            seq += 1
            at = self._clock().isoformat(timespec="microseconds")
            text = json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)
            digest = _entry_hash(prev, seq, at, actor, action.value, text)
            rows.append(AuditRow(seq, at, actor, action.value, text, prev, digest, self._mac(digest)))
            prev = digest
        if not rows:
            return seq
        head_mac = self._mac(_head_bytes(seq, prev))
        self._tx.audit.append(rows, f"{seq}:{prev.hex()}:{head_mac.hex()}")
        self._head = self.appended = Head(seq, prev)
        return seq

    def entries(self, action: AuditAction | None = None) -> list[AuditEntry]:
        return [
            AuditEntry(r.seq, r.at, r.actor, r.action, json.loads(r.details))
            for r in self._tx.audit.rows(None if action is None else action.value)
        ]

    def verify(self, witnesses: Sequence[Witness] = ()) -> AuditReport:
        """Walk the whole chain (hashes, links, MACs, sequence, the MAC'd head), then compare
        its content with each witness: the log must hold the witnessed entry with the
        witnessed hash, recomputed from the entries themselves (not their stored hashes), and
        the database's CRL number must not be below the witnessed one.

        Read witnesses before calling: all of this reads one snapshot of the database, which
        then holds at least what they witnessed (concurrent commits are no finding)."""
        with self._tx.snapshot():  # deferred: a read snapshot, no write lock
            return self._verify(witnesses)

    def _verify(self, witnesses: Sequence[Witness]) -> AuditReport:
        findings: list[Finding] = []
        marks = {w.seq for w in witnesses}
        at_mark: dict[int, bytes] = {}
        prev = GENESIS  # the stored chain, for the chain check
        content = GENESIS  # the chain recomputed from the entries' content only
        expected = 1
        count = 0
        last = 0
        chain_ok = True
        for seq, at, actor, action, details, prev_hash, digest, mac in (
            (r.seq, r.at, r.actor, r.action, r.details, r.prev_hash, r.hash, r.mac) for r in self._tx.audit.rows()
        ):
            count += 1
            last = seq
            before = content
            content = _entry_hash(content, seq, at, actor, action, details)
            if seq in marks:
                at_mark[seq] = content
            if not chain_ok:
                continue
            problem = None
            if seq != expected:
                problem, seq_bad = f"entry {expected} is missing", expected
            elif bytes(prev_hash) != prev:
                problem, seq_bad = f"entry {seq} does not link to entry {seq - 1}", seq
            else:
                # While the chain holds, the stored chain and the content chain are the same.
                recomputed = content if prev == before else _entry_hash(prev, seq, at, actor, action, details)
                seq_bad = seq
                if not hmac.compare_digest(recomputed, bytes(digest)):
                    problem = f"entry {seq} was altered"
                elif not hmac.compare_digest(self._mac(recomputed), bytes(mac)):
                    problem = f"entry {seq} has a bad MAC"
                prev = recomputed
            if problem is not None:
                findings.append(Finding(seq_bad, problem, FindingSource.CHAIN))
                chain_ok = False
            expected += 1
        head_finding = self._verify_head(count, prev) if chain_ok else None
        if head_finding is not None:
            findings.append(head_finding)
        db_crl = crl_number_of(self._tx)
        for w in witnesses:
            if w.seq > last:
                findings.append(
                    Finding(
                        last + 1,
                        f"the log ends at entry {last} but {w.name} names entry {w.seq}: "
                        "entries were cut or the database was rolled back",
                        w.source,
                    )
                )
            elif w.seq not in at_mark:
                findings.append(Finding(w.seq, f"entry {w.seq}, named by {w.name}, is missing", w.source))
            elif not hmac.compare_digest(at_mark[w.seq], w.digest):
                findings.append(
                    Finding(
                        w.seq,
                        f"the log up to entry {w.seq} differs from {w.name}: "
                        f"an entry at or before {w.seq} was changed, removed or reordered",
                        w.source,
                    )
                )
            if db_crl < w.crl_number:
                findings.append(
                    Finding(
                        w.seq,
                        f"the database's last CRL number is {db_crl} but {w.name} says {w.crl_number} "
                        "was drawn: the database was rolled back",
                        w.source,
                    )
                )
        checked = (FindingSource.CHAIN, FindingSource.HEAD, *(w.source for w in witnesses))
        if not findings:
            return AuditReport(count, True, checked=checked)
        first = min(findings, key=lambda f: f.entry)
        return AuditReport(count, False, first.entry, first.problem, tuple(findings), checked)

    def _verify_head(self, count: int, last_digest: bytes) -> Finding | None:
        head = self._tx.audit.head()
        if head is None:
            if count:
                return Finding(count, "the audit head is missing", FindingSource.HEAD)
            return None
        try:
            h_seq_s, h_digest_s, h_mac_s = head.split(":")
            h_seq, h_digest, h_mac = int(h_seq_s), bytes.fromhex(h_digest_s), bytes.fromhex(h_mac_s)
        except ValueError:
            return Finding(count, "the audit head is malformed", FindingSource.HEAD)
        if not hmac.compare_digest(self._mac(_head_bytes(h_seq, h_digest)), h_mac):
            return Finding(h_seq, "the audit head has a bad MAC", FindingSource.HEAD)
        if h_seq != count or not hmac.compare_digest(h_digest, last_digest):
            return Finding(
                min(h_seq, count) + 1,
                f"the log ends at entry {count} but its head names entry {h_seq}",
                FindingSource.HEAD,
            )
        return None

    def head(self) -> Head | None:
        """The last entry (after the head check), for anchors and checkpoints."""
        return self._stored_head()
