"""The audit head anchored on the KM token, outside the database.

After each committed state change the KM writes (seq, hash of entry seq, last CRL number,
MAC) to the KM token. A database writer cannot touch it, so the database must always hold
the anchored entry with the anchored hash, and a CRL number at least the anchored one; it
may be ahead of the anchor by what committed just before a crash (the anchor is written
after the commit, never before, so a crash never makes an honest database look cut).

On the token the anchor lives in two private data objects ("slots"), the newer and the
older; a write replaces the older one. SoftHSM2 rewrites an object's file in place
(truncate, then write), so a kill during a write can destroy that slot, but never the
other, which holds the anchor before it: a whole anchor survives any kill, and a lost slot
is made again by the next write. Writers take a lock and compare before writing, so
concurrent KM processes never move the anchor backwards; readers take the highest slot whose
MAC verifies. (Creating a fresh object per change would avoid in-place writes altogether,
but SoftHSM2 writes a new object's file a dozen times over, each a truncate and a write;
one rewrite of a slot is the least a token update costs.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hsmkm import errors
from hsmkm.keys.token import DataObjectRef, Token
from hsmkm.km.audit import FindingSource, Head, Witness, crl_number_of
from hsmkm.km.config import Home
from hsmkm.store.tx import Tx

APPLICATION = "hsmkm-audit-anchor"
_PREFIX = "hsmkm-audit-anchor/1"
_SLOTS = 2
_READ_TRIES = 4

Mac = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Anchor:
    seq: int
    digest: bytes
    crl_number: int

    def body(self) -> str:
        return f"{_PREFIX} {self.seq} {self.digest.hex()} {self.crl_number}"

    def witness(self) -> Witness:
        return Witness(FindingSource.ANCHOR, self.seq, self.digest, self.crl_number, "the token's anchor")


def _encode(anchor: Anchor, mac: Mac) -> str:
    body = anchor.body()
    return f"{body} {mac(body.encode()).hex()}"


def _decode(label: str, mac: Mac) -> Anchor | None:
    """The anchor a slot holds, or None if it is not one whose MAC verifies."""
    parts = label.split(" ")
    if len(parts) != 5 or parts[0] != _PREFIX:
        return None
    try:
        anchor = Anchor(int(parts[1]), bytes.fromhex(parts[2]), int(parts[3]))
        tag = bytes.fromhex(parts[4])
    except ValueError:
        return None
    body = " ".join(parts[:4])
    if len(anchor.digest) != 32 or body != anchor.body() or not hmac.compare_digest(mac(body.encode()), tag):
        return None  # only the one spelling _encode writes is accepted
    return anchor


def anchor_lock(home: Home) -> Path:
    """The lock anchor writers on this machine take (beside the database it anchors)."""
    return home.root / "audit-anchor.lock"


class TokenAnchor:
    """Reads, checks and advances the anchor on one KM token session."""

    def __init__(self, session: Token, mac: Mac, lock_path: Path) -> None:
        self._session = session
        self._mac = mac
        self._lock_path = lock_path
        self._verified: dict[str, Anchor] = {}  # labels whose MAC this process checked already
        self._known: list[DataObjectRef] = []

    def _remember(self, label: str, anchor: Anchor) -> None:
        """Keep the last few verified labels (the two slots, and what replaced them)."""
        self._verified = {label: anchor, **dict(list(self._verified.items())[:3])}

    def _objects(self) -> list[DataObjectRef]:
        """The slot objects as they are now: the ones this process knows, read again (cheaper
        than a search, which reads every object on the token), or a search if one is gone."""
        if self._known:
            now = [self._session.data_reread(obj) for obj in self._known]
            if all(obj is not None for obj in now):
                return [obj for obj in now if obj is not None]
        found = self._session.data_find(APPLICATION)
        # Fewer than two: one may be mid-write in another process; search again next time.
        self._known = found if len(found) >= _SLOTS else []
        return found

    def _slots(self) -> tuple[list[tuple[Anchor, DataObjectRef]], list[DataObjectRef]]:
        """(valid slots, lowest seq first; objects of ours that are not valid anchors)."""
        valid, invalid = [], []
        for obj in self._objects():
            anchor = self._verified.get(obj.label)
            if anchor is None:
                anchor = _decode(obj.label, self._mac)
                if anchor is not None:
                    self._remember(obj.label, anchor)
            if anchor is None:
                invalid.append(obj)
            else:
                valid.append((anchor, obj))
        valid.sort(key=lambda item: item[0].seq)
        return valid, invalid

    def read(self) -> Anchor | None:
        """The highest valid anchor on the token (None on a KM that never wrote one)."""
        for attempt in range(_READ_TRIES):
            valid, invalid = self._slots()
            if valid:
                return valid[-1][0]
            if not invalid:
                return None
            # Only objects that do not verify: a slot caught mid-write by this look. Again.
            time.sleep(0.005 * (attempt + 1))
        raise errors.AuditChainBroken(
            f"{self._session.what()}: the audit anchor does not verify (it is not this KM's, or was altered)"
        )

    def check(self, tx: Tx) -> None:
        """Refuse (AuditChainBroken) if the database lacks the anchored entry or CRL number.

        Runs inside a state change's write transaction, before its audit entry."""
        anchor = self.read()
        if anchor is None:
            return
        stored = tx.audit.hash_at(anchor.seq)
        if stored is None or not hmac.compare_digest(stored, anchor.digest):
            raise errors.AuditChainBroken(
                f"the database does not hold audit entry {anchor.seq} as the token's anchor records it: "
                "it was cut or rolled back; refusing to change anything (run 'hsmkm audit verify')"
            )
        if crl_number_of(tx) < anchor.crl_number:
            raise errors.AuditChainBroken(
                f"the database's CRL number is below {anchor.crl_number}, which the token's anchor records: "
                "it was rolled back; refusing to change anything (run 'hsmkm audit verify')"
            )

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def advance(self, head: Head, crl_number: int) -> None:
        """Anchor a committed head over the older slot (or a new one), unless a later head is
        anchored already."""
        with self._writer():
            valid, invalid = self._slots()
            if valid and valid[-1][0].seq >= head.seq:
                return
            new = Anchor(head.seq, head.digest, crl_number)
            label = _encode(new, self._mac)
            self._remember(label, new)
            if len(valid) >= _SLOTS:
                self._session.data_relabel(valid[0][1], label)
                extra = valid[1:-1]  # slots beyond two, left by an earlier repair
            else:
                self._session.data_create(APPLICATION, label)
                extra = []
                self._known = []
            # Under the lock nobody else writes, so what does not verify is no one's work in progress.
            for obj in [o for _, o in extra] + invalid:
                self._session.data_destroy(obj)
                self._known = []

    def start(self, head: Head) -> None:
        """The first anchor of a new KM, in both slots; objects left on the token by an
        earlier KM (whose audit key is gone, so their MACs cannot verify) are destroyed."""
        with self._writer():
            for obj in self._session.data_find(APPLICATION):
                self._session.data_destroy(obj)
            label = _encode(Anchor(head.seq, head.digest, 0), self._mac)
            for _ in range(_SLOTS):
                self._session.data_create(APPLICATION, label)
            self._known = []

    def replace(self, head: Head, crl_number: int) -> None:
        """Anchor ``head`` even below the anchor there (an accepted rollback): new slots are
        made before the old ones are destroyed, so a kill leaves the old anchor, and the
        rollback still refused, rather than none."""
        with self._writer():
            old = self._session.data_find(APPLICATION)
            label = _encode(Anchor(head.seq, head.digest, crl_number), self._mac)
            for _ in range(_SLOTS):
                self._session.data_create(APPLICATION, label)
            for obj in old:
                self._session.data_destroy(obj)
            self._known = []
