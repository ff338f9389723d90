"""The client's revocation index: a perfect hash over the revoked serials.

Each revoked serial owns exactly one slot, found from its hash and its bucket's *pilot*
(hash and displace, as in CHD and PTHash). A check reads one 8-bit pilot and one 32-byte
slot and compares once: the same work at 10 entries and at 1,000,000, with no probe chain
whose length depends on the load. The index is built once per CRL update and memory-mapped.

Layout: header (64 bytes) | pilots (a byte per bucket, padded to 64 bytes)
| slots (serial 20 bytes, revocation time int64, reason code, 3 bytes padding) | overflow.

The hashes are Python's. ``hash()`` of an int is fixed by the language (the number modulo a
Mersenne prime, ``sys.hash_info.modulus``); the hash of a tuple of ints is fixed within an
interpreter version. The header records both, and an index that another interpreter built is
refused as outdated, so the cache rebuilds it from its verified CRLs. Serials whose int
hashes coincide, and serials outside 1 … 2**160 - 1, go to a small overflow table.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from hsmkm import errors
from hsmkm.x509.crl import RevocationReason

MAGIC = b"HKCRLIX3"
_FAMILY = MAGIC[:7]
HEADER = struct.Struct("<8sQQQQQBB14x")  # magic, entries, buckets, slots, overflow, hash modulus, Python major, minor
SLOT = struct.Struct(">20sqB3x")
OVERFLOW = struct.Struct(">21sqB2x")
_TAIL = struct.Struct(">qB")
SLOT_SIZE = SLOT.size
KEYS_PER_BUCKET = 2.5
SLOT_LOAD = 0.7  # slots filled; lower means a quicker pilot search and a larger file
MIN_SLOTS = 16
MAX_PILOT = 0xFF  # a byte: half the memory of 16-bit pilots, and a table more often in cache
_SERIAL_LIMIT = 1 << 160
_REASONS = {reason.code: reason for reason in RevocationReason}


class IndexOutdated(errors.MalformedInput):
    """An index of another format version or built by another interpreter: rebuild it."""


class RevocationInfo(NamedTuple):
    revoked_at: datetime
    reason: RevocationReason


class _NoPilot(Exception):
    pass


def _interpreter() -> tuple[int, int, int]:
    return sys.hash_info.modulus, sys.version_info[0], sys.version_info[1]


def _pilots_for(members: list[list[int]], slots: int) -> bytearray:
    """A pilot per bucket that sends each of its hashes to a slot no other hash holds;
    the fullest buckets choose first, while the table is emptiest. _NoPilot when a bucket
    finds none (not seen at a 70 % load: the last buckets need about three tries)."""
    taken = bytearray(slots)
    pilots = bytearray(len(members))
    for bucket in sorted(range(len(members)), key=lambda b: len(members[b]), reverse=True):
        hashes = members[bucket]
        if not hashes:
            break
        for pilot in range(MAX_PILOT + 1):
            spots: list[int] = []
            for h in hashes:
                spot = hash((h, pilot)) % slots
                if taken[spot] or spot in spots:
                    break
                spots.append(spot)
            else:
                for spot in spots:
                    taken[spot] = 1
                pilots[bucket] = pilot
                break
        else:
            raise _NoPilot
    return pilots


def build_index(revocations: Iterable[tuple[int, int, int]]) -> bytearray:
    """The index file for (serial, revocation time in seconds since 1970, reason code) rows."""
    by_hash: dict[int, tuple[int, int, int]] = {}
    overflow: list[tuple[int, int, int]] = []
    for row in revocations:
        serial = row[0]
        h = hash(serial)
        if 0 < serial < _SERIAL_LIMIT and h not in by_hash:
            by_hash[h] = row
        else:
            overflow.append(row)
    count = len(by_hash)
    buckets = max(1, math.ceil(count / KEYS_PER_BUCKET))
    slots = max(MIN_SLOTS, math.ceil(count / SLOT_LOAD))
    members: list[list[int]] = [[] for _ in range(buckets)]
    for h in by_hash:
        members[h % buckets].append(h)
    while True:
        try:
            pilots = _pilots_for(members, slots)
            break
        except _NoPilot:  # not seen at this load; a roomier table always succeeds in the end
            slots += slots // 8
    pilots_size = -(-buckets // 64) * 64
    slots_at = HEADER.size + pilots_size
    out = bytearray(slots_at + SLOT_SIZE * (slots + len(overflow)))
    HEADER.pack_into(out, 0, MAGIC, count + len(overflow), buckets, slots, len(overflow), *_interpreter())
    out[HEADER.size : HEADER.size + buckets] = pilots
    pack = SLOT.pack_into
    for h, (serial, when, code) in by_hash.items():
        spot = hash((h, pilots[h % buckets])) % slots
        pack(out, slots_at + spot * SLOT_SIZE, serial.to_bytes(20, "big"), when, code)
    at = slots_at + slots * SLOT_SIZE
    for serial, when, code in overflow:
        try:
            raw = serial.to_bytes(21, "big", signed=True)
        except OverflowError:
            raise errors.MalformedInput(f"CRL: serial number {serial:#x} is longer than 20 octets") from None
        OVERFLOW.pack_into(out, at, raw, when, code)
        at += SLOT_SIZE
    return out


class CrlIndex:
    """A read-only index over a buffer (usually a memory-mapped file); ``check`` is one slot."""

    count: int

    def __init__(self, buffer: mmap.mmap | bytes | bytearray, where: str = "CRL index") -> None:
        if len(buffer) < HEADER.size or bytes(buffer[:7]) != _FAMILY:
            raise errors.MalformedInput(f"{where}: not a CRL index")
        magic, self.count, buckets, slots, overflow, *built_by = HEADER.unpack_from(buffer, 0)
        if magic != MAGIC or tuple(built_by) != _interpreter():
            raise IndexOutdated(f"{where}: built by another version")
        slots_at = HEADER.size + -(-buckets // 64) * 64
        if len(buffer) != slots_at + SLOT_SIZE * (slots + overflow) or not buckets or not slots:
            raise errors.MalformedInput(f"{where}: CRL index of the wrong size")
        self.size = len(buffer)
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._pilots = self._view[HEADER.size : HEADER.size + buckets]
        self._buckets, self._slots, self._slots_at = buckets, slots, slots_at
        self._overflow: dict[int, tuple[int, int]] = {}
        at = slots_at + slots * SLOT_SIZE
        for _ in range(overflow):
            raw, when, code = OVERFLOW.unpack_from(buffer, at)
            self._overflow[int.from_bytes(raw, "big", signed=True)] = (when, code)
            at += SLOT_SIZE

    @classmethod
    def open(cls, path: Path) -> CrlIndex:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if not size:
                raise errors.MalformedInput(f"{path}: not a CRL index")
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return cls(mapped, str(path))
        except errors.MalformedInput:
            mapped.close()
            raise

    def check(self, serial: int) -> RevocationInfo | None:
        """The serial's revocation, if the index holds it: one pilot, one slot, one compare."""
        if 0 < serial < _SERIAL_LIMIT:
            h = hash(serial)
            at = self._slots_at + (hash((h, self._pilots[h % self._buckets])) % self._slots) * SLOT_SIZE
            buffer = self._buffer
            if buffer[at : at + 20] == serial.to_bytes(20, "big"):
                when, code = _TAIL.unpack_from(buffer, at + 20)
                return RevocationInfo(datetime.fromtimestamp(when, UTC), _REASONS[code])
        if self._overflow:
            found = self._overflow.get(serial)
            if found is not None:
                return RevocationInfo(datetime.fromtimestamp(found[0], UTC), _REASONS[found[1]])
        return None

    def close(self) -> None:
        self._pilots.release()
        self._view.release()
        if isinstance(self._buffer, mmap.mmap):
            self._buffer.close()
