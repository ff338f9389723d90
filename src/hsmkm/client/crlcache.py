"""The client's CRL cache: verified CRLs and an index whose lookup cost does not grow.

The index is a memory-mapped open-addressing table of fixed 28-byte slots, at most two
thirds full, so a check reads one slot (now and then the next) at 10 entries or at 1,000,000. Updates write a new index and then switch ``meta.json`` to it (both atomically),
so a refused or interrupted update leaves the previous cache answering.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


from cryptography import x509

from hsmkm import errors
from hsmkm.atomic import atomic_writer, write_atomic
from hsmkm.x509.crl import ParsedCrl, RevocationReason, parse_crl, verify_crl_signature

MAGIC = b"HKCRLIX2"
RECORD = 28  # serial (20) + revocation time (4, seconds) + reason code (1) + in use (1) + padding
SLOT = struct.Struct(">20sIBB2x")
_TAIL = struct.Struct(">IB")
_REASONS = {r.code: r for r in RevocationReason}
HEADER = struct.Struct(">8sQB7x")
SERIAL_BITS = 160


@dataclass(frozen=True)
class RevocationInfo:
    revoked_at: datetime
    reason: RevocationReason


@dataclass(frozen=True)
class CacheStatus:
    full_number: int | None
    delta_number: int | None
    this_update: datetime | None
    next_update: datetime | None
    entries: int
    stale: bool


def _table_bits(count: int) -> int:
    """Slots: the power of two at or above 1.5 × the entries (load at most two thirds)."""
    return max(4, (count + count // 2).bit_length())


def _slot(serial: int, mask: int) -> int:
    # Python's int hash (serial mod 2**61 - 1) spreads sequential and random serials alike.
    return hash(serial) & mask


def build_index(entries: dict[int, tuple[int, int]]) -> bytes:
    """The index file for {serial: (revoked epoch seconds, reason code)}: an open-addressing
    table, so a check reads one slot (rarely a neighbour) whatever the number of entries."""
    count = len(entries)
    bits = _table_bits(count)
    mask = (1 << bits) - 1
    out = bytearray(HEADER.size + RECORD * (1 << bits))
    HEADER.pack_into(out, 0, MAGIC, count, bits)
    pack = SLOT.pack_into
    used = bytearray(1 << bits)
    for serial, (when, reason) in entries.items():
        i = _slot(serial, mask)
        while used[i]:
            i = (i + 1) & mask
        used[i] = 1
        pack(out, HEADER.size + i * RECORD, serial.to_bytes(20, "big"), max(0, min(when, 0xFFFFFFFF)), reason, 1)
    return bytes(out)


class CrlIndex:
    """A read-only, memory-mapped index; ``check`` is a bucket lookup."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if self._mm is None or self._mm[:8] != MAGIC:
            raise errors.MalformedInput(f"{path}: not a CRL index")
        _, self.count, self.bits = HEADER.unpack_from(self._mm, 0)
        self._mask = (1 << self.bits) - 1
        if size != HEADER.size + RECORD * (1 << self.bits):
            raise errors.MalformedInput(f"{path}: CRL index of the wrong size")
        self.size = size

    def check(self, serial: int) -> RevocationInfo | None:
        mm = self._mm
        assert mm is not None
        if serial < 0 or serial >> SERIAL_BITS:
            return None
        key = serial.to_bytes(20, "big")
        mask = self._mask
        i = _slot(serial, mask)
        while True:
            at = HEADER.size + i * RECORD
            if not mm[at + 25]:
                return None
            if mm[at : at + 20] == key:
                when, reason = _TAIL.unpack_from(mm, at + 20)
                return RevocationInfo(datetime.fromtimestamp(when, timezone.utc), _REASONS[reason])
            i = (i + 1) & mask

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()


class CrlCache:
    """Verified full and delta CRLs of one CA, and their index, in a directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._index: CrlIndex | None = None
        self._meta: dict[str, object] | None = None

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def _load_meta(self) -> dict[str, object] | None:
        if self._meta is None and self.meta_path.exists():
            try:
                self._meta = dict(json.loads(self.meta_path.read_text()))
            except ValueError:
                raise errors.MalformedInput(f"{self.meta_path}: damaged cache metadata") from None
        return self._meta

    def _index_now(self) -> CrlIndex | None:
        meta = self._load_meta()
        if meta is None:
            return None
        if self._index is None:
            self._index = CrlIndex(self.dir / str(meta["index"]))
        return self._index

    def check(self, serial: int) -> RevocationInfo | None:
        """Revocation status from the cache: one lookup, whatever the CRL's size."""
        index = self._index_now()
        if index is None:
            raise errors.Unreachable("no CRL in the cache yet (run 'hsmkm crl fetch')")
        return index.check(serial)

    def status(self, now: datetime) -> CacheStatus:
        meta = self._load_meta()
        if meta is None:
            return CacheStatus(None, None, None, None, 0, True)
        nxt = datetime.fromisoformat(str(meta["next_update"]))
        return CacheStatus(
            int(meta["full_number"]),  # type: ignore[call-overload]
            None if meta.get("delta_number") is None else int(meta["delta_number"]),  # type: ignore[call-overload]
            datetime.fromisoformat(str(meta["this_update"])),
            nxt,
            int(meta["entries"]),  # type: ignore[call-overload]
            now > nxt,
        )

    def update(self, full_der: bytes, delta_der: bytes | None, ca_cert: x509.Certificate, now: datetime) -> CacheStatus:
        """Verify the CRLs against the CA and install them; a refusal changes nothing."""
        full = self._verified(full_der, ca_cert, "full CRL")
        if full.delta_of is not None:
            raise errors.ValidationFailed("the full CRL is a delta CRL")
        delta = self._verified(delta_der, ca_cert, "delta CRL") if delta_der else None
        meta = self._load_meta()
        if meta is not None:
            cached_full = int(meta["full_number"])  # type: ignore[call-overload]
            if (full.number or 0) < cached_full:
                raise errors.ValidationFailed(
                    f"the full CRL (#{full.number}) is older than the cached one (#{cached_full}); keeping the cache"
                )
            cached_delta = meta.get("delta_number")
            if (
                delta is not None and cached_delta is not None and (full.number or 0) == cached_full
                and (delta.number or 0) < int(cached_delta)  # type: ignore[call-overload]
            ):
                raise errors.ValidationFailed("the delta CRL is older than the cached one; keeping the cache")
        if delta is not None:
            if delta.delta_of is None:
                raise errors.ValidationFailed("the delta CRL has no delta CRL indicator")
            if delta.delta_of > (full.number or 0) or (delta.number or 0) <= (full.number or 0):
                # A delta for another base (RFC 5280 §5.2.4): use the full CRL alone.
                delta = None
        entries: dict[int, tuple[int, int]] = {}
        for e in full.entries():
            entries[e.serial] = (int(e.revoked_at.timestamp()), e.reason.code)
        if delta is not None:
            for e in delta.entries():
                if e.reason is RevocationReason.REMOVE_FROM_CRL:
                    entries.pop(e.serial, None)
                else:
                    entries[e.serial] = (int(e.revoked_at.timestamp()), e.reason.code)
        source = delta if delta is not None else full
        next_update = min(x for x in (full.next_update, source.next_update) if x is not None) if full.next_update else now
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"index-{full.number}-{delta.number if delta else 0}.bin"
        with atomic_writer(self.dir / name, 0o644) as fh:
            fh.write(build_index(entries))
        write_atomic(self.dir / "full.crl", full.der)
        if delta is not None:
            write_atomic(self.dir / "delta.crl", delta.der)
        new_meta: dict[str, object] = {
            "full_number": full.number,
            "delta_number": delta.number if delta else None,
            "this_update": source.this_update.isoformat(),
            "next_update": next_update.isoformat(),
            "entries": len(entries),
            "index": name,
        }
        write_atomic(self.meta_path, json.dumps(new_meta, indent=1).encode())
        if self._index is not None:
            self._index.close()
        self._index, self._meta = None, new_meta
        for old in self.dir.glob("index-*.bin"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.status(now)

    @staticmethod
    def _verified(der: bytes, ca_cert: x509.Certificate, what: str) -> ParsedCrl:
        try:
            crl = parse_crl(der)
        except errors.MalformedInput as exc:
            raise errors.MalformedInput(f"{what}: {exc}") from None
        if crl.issuer_der != ca_cert.subject.public_bytes():
            raise errors.ValidationFailed(f"{what}: issued by another CA")
        try:
            verify_crl_signature(crl, ca_cert.public_key())  # type: ignore[arg-type]
        except errors.SignatureInvalid:
            raise errors.SignatureInvalid(f"{what}: its signature does not verify with the CA's key") from None
        if crl.number is None:
            raise errors.ValidationFailed(f"{what}: no CRL number")
        return crl
