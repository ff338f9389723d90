"""The client's CRL cache: the verified full and delta CRLs of one CA and a revocation index.

The index (``crlindex``) is built from the full CRL once, when a new full CRL arrives; a
delta CRL only replaces a small in-memory overlay read from its file, so the daily update
costs what the delta holds, not what the base holds. Files carry their CRL numbers and
``meta.json`` names the current set: an update writes the new files, then switches
``meta.json`` (atomically), so a refused or interrupted update leaves the previous cache
answering.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from hsmkm import errors
from hsmkm.atomic import atomic_writer, write_atomic
from hsmkm.client.crlindex import CrlIndex, RevocationInfo, build_index
from hsmkm.x509.crl import RevocationReason
from hsmkm.x509.crlparse import ParsedCrl, parse_crl, verify_crl_signature

__all__ = ["CacheStatus", "CrlCache", "RevocationInfo"]

Overlay = dict[int, RevocationInfo | None]  # None: removed from the CRL by the delta


@dataclass(frozen=True)
class CacheStatus:
    full_number: int | None
    delta_number: int | None
    this_update: datetime | None
    next_update: datetime | None
    entries: int
    stale: bool


def delta_overlay(delta: ParsedCrl) -> Overlay:
    """What a delta CRL changes: {serial: its revocation, or None when removeFromCRL}."""
    remove = RevocationReason.REMOVE_FROM_CRL.code
    return {
        serial: None
        if code == remove
        else RevocationInfo(datetime.fromtimestamp(when, UTC), RevocationReason.from_code(code))
        for serial, when, code in delta.revocations()
    }


class CrlCache:
    """Verified full and delta CRLs of one CA, and their index, in a directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._index: CrlIndex | None = None
        self._overlay: Overlay = {}
        self._meta: dict[str, object] | None = None

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def _load_meta(self) -> dict[str, object] | None:
        """The current set, or None for an empty cache and for one this version cannot read
        (damaged, or of an earlier layout): the next update replaces it."""
        if self._meta is None and self.meta_path.exists():
            try:
                meta = dict(json.loads(self.meta_path.read_text()))
            except (ValueError, TypeError):
                return None
            if _well_formed(meta):
                self._meta = meta
        return self._meta

    def _open(self) -> CrlIndex | None:
        meta = self._load_meta()
        if meta is None:
            return None
        path = self.dir / str(meta["index"])
        try:
            index = CrlIndex.open(path)
        except (errors.MalformedInput, FileNotFoundError):
            # Another version's index, or a damaged or missing one: rebuild it from the full
            # CRL this cache verified when it installed it.
            index = self._rebuilt_index(meta, path)
        overlay: Overlay = {}
        if meta.get("delta"):
            delta = self._cached_crl(str(meta["delta"]), meta.get("delta_number"))
            overlay = delta_overlay(delta)
        self._index, self._overlay = index, overlay
        return index

    def _cached_crl(self, name: str, number: object) -> ParsedCrl:
        try:
            crl = parse_crl((self.dir / name).read_bytes())
        except (OSError, errors.MalformedInput):
            crl = None
        if crl is None or crl.number != number:
            raise errors.MalformedInput(f"{self.dir}: damaged CRL cache (run 'hsmkm crl fetch')")
        return crl

    def _rebuilt_index(self, meta: dict[str, object], path: Path) -> CrlIndex:
        full = self._cached_crl(str(meta["full"]), meta["full_number"])
        data = build_index(full.revocations())
        try:
            with atomic_writer(path, 0o644) as fh:
                fh.write(data)
        except OSError:
            return CrlIndex(data, str(path))  # a read-only cache still answers, from memory
        return CrlIndex.open(path)

    def check(self, serial: int) -> RevocationInfo | None:
        """Revocation status from the cache: the delta's overlay, then one index lookup."""
        index = self._index or self._open()
        if index is None:
            raise errors.Unreachable("no usable CRL in the cache (run 'hsmkm crl fetch')")
        overlay = self._overlay
        if overlay and serial in overlay:
            return overlay[serial]
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
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".update.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one updater at a time; readers never wait
            self._reload()  # what another updater installed meanwhile counts
            return self._update(full_der, delta_der, ca_cert, now)

    def _reload(self) -> None:
        seen, self._meta = self._meta, None
        if self._load_meta() != seen and self._index is not None:
            self._index.close()
            self._index, self._overlay = None, {}

    def _update(
        self, full_der: bytes, delta_der: bytes | None, ca_cert: x509.Certificate, now: datetime
    ) -> CacheStatus:
        full = self._verified(full_der, ca_cert, "full CRL")
        if full.delta_of is not None:
            raise errors.ValidationFailed("the full CRL is a delta CRL")
        delta = self._verified(delta_der, ca_cert, "delta CRL") if delta_der else None
        meta = self._load_meta()
        full_number = full.number or 0
        if meta is not None:
            cached_full = int(meta["full_number"])  # type: ignore[call-overload]
            if full_number < cached_full:
                raise errors.ValidationFailed(
                    f"the full CRL (#{full.number}) is older than the cached one (#{cached_full}); keeping the cache"
                )
            cached_delta = meta.get("delta_number")
            if (
                delta is not None
                and cached_delta is not None
                and full_number == cached_full
                and (delta.number or 0) < int(cached_delta)  # type: ignore[call-overload]
            ):
                raise errors.ValidationFailed("the delta CRL is older than the cached one; keeping the cache")
        if delta is not None:
            if delta.delta_of is None:
                raise errors.ValidationFailed("the delta CRL has no delta CRL indicator")
            if delta.delta_of > full_number or (delta.number or 0) <= full_number:
                # A delta for another base (RFC 5280 §5.2.4): use the full CRL alone.
                delta = None
        overlay = delta_overlay(delta) if delta is not None else {}
        full_name, index_name = f"full-{full_number}.crl", f"index-{full_number}.bin"
        index = self._current_index_for(full, full_name, index_name)
        if index is None:
            data = build_index(full.revocations())
            write_atomic(self.dir / full_name, full.der)
            with atomic_writer(self.dir / index_name, 0o644) as fh:
                fh.write(data)
            index = CrlIndex.open(self.dir / index_name)
        delta_name = None
        if delta is not None:
            delta_name = f"delta-{delta.number}.crl"
            write_atomic(self.dir / delta_name, delta.der)
        source = delta if delta is not None else full
        next_update = (
            min(x for x in (full.next_update, source.next_update) if x is not None) if full.next_update else now
        )
        new_meta: dict[str, object] = {
            "full": full_name,
            "full_number": full.number,
            "index": index_name,
            "delta": delta_name,
            "delta_number": delta.number if delta else None,
            "this_update": source.this_update.isoformat(),
            "next_update": next_update.isoformat(),
            "entries": _effective_count(index, overlay),
        }
        write_atomic(self.meta_path, json.dumps(new_meta, indent=1).encode())
        if self._index is not None and self._index is not index:
            self._index.close()
        self._index, self._overlay, self._meta = index, overlay, new_meta
        keep = {full_name, index_name, delta_name, "meta.json"}
        for old in self.dir.iterdir():
            if old.name not in keep and old.suffix in (".crl", ".bin"):
                old.unlink(missing_ok=True)
        return self.status(now)

    def _current_index_for(self, full: ParsedCrl, full_name: str, index_name: str) -> CrlIndex | None:
        """The installed index, when it was built from a full CRL with this very content."""
        meta = self._load_meta()
        if meta is None or meta.get("full") != full_name or meta.get("index") != index_name:
            return None
        try:
            if parse_crl((self.dir / full_name).read_bytes()).tbs != full.tbs:
                return None
            return self._index or self._open()
        except (OSError, errors.MalformedInput):
            return None

    @staticmethod
    def _verified(der: bytes, ca_cert: x509.Certificate, what: str) -> ParsedCrl:
        try:
            crl = parse_crl(der)
        except errors.MalformedInput as exc:
            raise errors.MalformedInput(f"{what}: {str(exc).removeprefix('CRL: ')}") from None
        if crl.issuer_der != ca_cert.subject.public_bytes():
            raise errors.ValidationFailed(f"{what}: issued by another CA")
        try:
            verify_crl_signature(crl, ca_cert.public_key())  # type: ignore[arg-type]
        except errors.SignatureInvalid:
            raise errors.SignatureInvalid(f"{what}: its signature does not verify with the CA's key") from None
        if crl.number is None:
            raise errors.ValidationFailed(f"{what}: no CRL number")
        return crl


def _well_formed(meta: dict[str, object]) -> bool:
    """meta.json as update() writes it: names, numbers and times of the right types."""
    try:
        datetime.fromisoformat(str(meta["this_update"]))
        datetime.fromisoformat(str(meta["next_update"]))
    except (KeyError, ValueError):
        return False
    return (
        isinstance(meta.get("full"), str)
        and isinstance(meta.get("index"), str)
        and isinstance(meta.get("full_number"), int)
        and isinstance(meta.get("entries"), int)
        and isinstance(meta.get("delta"), (str, type(None)))
        and isinstance(meta.get("delta_number"), (int, type(None)))
    )


def _effective_count(index: CrlIndex, overlay: Overlay) -> int:
    """Entries of the full CRL with the delta applied."""
    count = index.count
    for serial, info in overlay.items():
        in_base = index.check(serial) is not None
        if info is None and in_base:
            count -= 1
        elif info is not None and not in_base:
            count += 1
    return count
