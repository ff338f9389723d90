"""A verified copy of a SoftHSM2 file store, so that a kill -9 never destroys a token.

SoftHSM2 rewrites ``token.object`` (on every login and PIN change) and each object file (on
every attribute set while an object is made) in place: truncate, then write, with no fsync
and no rename. A kill between the two leaves an empty file, and an empty ``token.object``
is a lost token. The object files are already encrypted under the token's own keys, so a
plain copy of them reveals nothing the store does not: ``backup/`` beside the config keeps
content-addressed copies and a manifest (names relative to the store, so the home can be
moved), refreshed after every change of token objects and checked before the module reads
the store. A damaged file that has a copy is restored from it; a damaged file that has none
(an object whose making was cut short) is moved aside, since it never held a usable key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from hsmkm import errors
from hsmkm.atomic import sweep_temps, write_atomic

MANIFEST_VERSION = 1
_ULONG = 8
# SoftHSM2's OSAttribute kinds in its file format.
_BOOL, _ULONG_KIND, _BYTES, _ATTRMAP, _MECHSET = 1, 2, 3, 4, 5
_TOKEN_LABEL_ATTR = 0x80005349
_RECHECKS = 4
# While other processes use the store, a damaged-looking file may be one they are writing
# right now (SoftHSM2 truncates, then writes): it must stay damaged this long to be repaired.
_SHARED_RECHECKS = 20
_SHARED_RECHECK_SECONDS = 0.1
# A damaged file of an unknown object is set aside only when it is this old and nobody else
# uses the store: a young one may be an object another process is making.
_SET_ASIDE_AGE_SECONDS = 10.0
# Without these a token is gone anyway; leave them for SoftHSM2 to report.
_NEVER_SET_ASIDE = frozenset({"token.object", "generation"})


class RepairKind(str, Enum):
    RESTORED = "restored"  # a damaged or missing file put back from the copy
    SET_ASIDE = "set-aside"  # a damaged file of an object never completed, moved out of the store


@dataclass(frozen=True)
class Repair:
    """One file the check found damaged, and what it did."""

    token_dir: str
    file: str
    kind: RepairKind

    def describe(self) -> str:
        if self.kind is RepairKind.RESTORED:
            return f"token file {self.token_dir}/{self.file} was damaged and has been restored from the store's copy"
        return f"token file {self.token_dir}/{self.file} of an object never completed was set aside"


def parse_object_file(data: bytes) -> dict[int, int] | None:
    """The attribute types and kinds of a SoftHSM2 object file, or None if it does not parse."""
    if len(data) < _ULONG:
        return None
    pos = _ULONG  # the file's own generation number
    attrs: dict[int, int] = {}

    def ulong() -> int:
        nonlocal pos
        if pos + _ULONG > len(data):
            raise ValueError
        value = int.from_bytes(data[pos : pos + _ULONG], "big")
        pos += _ULONG
        return value

    try:
        while pos < len(data):
            attr_type = ulong()
            kind = ulong()
            if kind == _BOOL:
                pos += 1
            elif kind == _ULONG_KIND:
                pos += _ULONG
            elif kind in (_BYTES, _ATTRMAP):
                size = ulong()
                pos += size
            elif kind == _MECHSET:
                count = ulong()
                pos += count * _ULONG
            else:
                return None
            if pos > len(data):
                return None
            attrs[attr_type] = kind
    except ValueError:
        return None
    return attrs if attrs else None


def file_is_sound(name: str, data: bytes) -> bool:
    """Whether a token file's content is whole (what SoftHSM2 can read back)."""
    if name == "generation":
        return len(data) == _ULONG
    if name.endswith(".lock"):
        return True
    attrs = parse_object_file(data)
    if attrs is None:
        return False
    return name != "token.object" or _TOKEN_LABEL_ATTR in attrs


def store_tokendir(config: Path) -> Path | None:
    """The token directory a SoftHSM2 config names (None if it has no file store)."""
    try:
        text = config.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "directories.tokendir":
            return Path(value.strip())
    return None


class TokenStore:
    """A SoftHSM2 file store and its verified copy (``backup/`` beside the config)."""

    def __init__(self, tokendir: Path, backup: Path) -> None:
        self.tokendir = tokendir
        self.backup = backup
        self._users_fd: int | None = None

    @property
    def users_path(self) -> Path:
        return self.backup / ".users"

    def attach(self) -> None:
        """Mark this process as using the store (a shared lock held until it exits)."""
        if self._users_fd is not None or not self.tokendir.is_dir():
            return
        self.backup.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.users_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._users_fd = fd

    def _alone(self) -> bool:
        """Whether no other process has the store loaded."""
        try:
            fd = os.open(self.users_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    @classmethod
    def of_config(cls, config: str | os.PathLike[str]) -> TokenStore | None:
        path = Path(config)
        tokendir = store_tokendir(path)
        if tokendir is None:
            return None
        return cls(tokendir, path.parent / "backup")

    @property
    def manifest_path(self) -> Path:
        return self.backup / "manifest.json"

    @property
    def blobs(self) -> Path:
        return self.backup / "objects"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.backup.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.backup / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _manifest(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise errors.TokenError(f"{self.manifest_path}: the token store's copy is unreadable") from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if data.get("version") != MANIFEST_VERSION or not isinstance(tokens, dict):
            raise errors.TokenError(f"{self.manifest_path}: the token store's copy has an unknown format")
        return tokens

    def _read(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                with contextlib.suppress(OSError):
                    fcntl.lockf(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError:
            return b""

    def _read_settled(self, path: Path, alone: bool = True) -> bytes | None:
        """The file's content; an unsound read is retried, as another process may be mid-write."""
        data = self._read(path)
        tries = _RECHECKS if alone else _SHARED_RECHECKS
        for attempt in range(tries):
            if data is None or file_is_sound(path.name, data):
                return data
            time.sleep(0.01 * (attempt + 1) if alone else _SHARED_RECHECK_SECONDS)
            data = self._read(path)
        return data

    def _blob(self, digest: str) -> bytes:
        try:
            data = (self.blobs / digest).read_bytes()
        except OSError:
            data = b""
        if hashlib.sha256(data).hexdigest() != digest:
            raise errors.TokenError(f"the token store's copy of object {digest[:12]} is damaged")
        return data

    # --- the two operations ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Copy every sound token file (fsynced; the manifest replaced atomically, last)."""
        if not self.tokendir.is_dir():
            return
        with self._locked():
            old = self._manifest()
            new: dict[str, dict[str, str]] = {}
            for tdir in sorted(p for p in self.tokendir.iterdir() if p.is_dir()):
                files: dict[str, str] = {}
                for path in sorted(tdir.iterdir()):
                    if path.name.endswith(".lock") or path.name.startswith(".") or not path.is_file():
                        continue
                    data = self._read_settled(path)
                    if data is None:
                        continue
                    if not file_is_sound(path.name, data):
                        previous = old.get(tdir.name, {}).get(path.name)
                        if previous is not None:
                            files[path.name] = previous
                        continue
                    digest = hashlib.sha256(data).hexdigest()
                    blob = self.blobs / digest
                    if not blob.exists():
                        write_atomic(blob, data, 0o600)
                    files[path.name] = digest
                new[tdir.name] = files
            body = json.dumps({"version": MANIFEST_VERSION, "tokens": new}, indent=1, sort_keys=True)
            write_atomic(self.manifest_path, (body + "\n").encode(), 0o600)
            keep = {d for files in new.values() for d in files.values()}
            for blob in self.blobs.iterdir() if self.blobs.is_dir() else ():
                if blob.name not in keep:
                    with contextlib.suppress(OSError):
                        blob.unlink()

    def check(self) -> list[Repair]:
        """Restore damaged token files from the copy; set aside damaged files it has no copy of.

        Run before the module reads the store. A file the copy has but the store does not is
        restored only if SoftHSM2 never removes it (``token.object``, ``generation``): an
        object file goes away only when its object is destroyed. While other processes use
        the store, a file is repaired only if it stays damaged for seconds (a live writer
        takes microseconds), and nothing is set aside.
        """
        if not self.tokendir.is_dir():
            return []
        repairs: list[Repair] = []
        with self._locked():
            alone = self._alone()
            for leftover in (self.backup, self.blobs):
                if leftover.is_dir():
                    sweep_temps(leftover)
            manifest = self._manifest()
            for tname, files in sorted(manifest.items()):
                tdir = self.tokendir / tname
                for fname, digest in sorted(files.items()):
                    path = tdir / fname
                    data = self._read_settled(path, alone)
                    if data is None and fname not in ("token.object", "generation"):
                        continue
                    if data is not None and file_is_sound(fname, data):
                        continue
                    tdir.mkdir(parents=True, exist_ok=True, mode=0o700)
                    write_atomic(path, self._blob(digest), 0o600)
                    repairs.append(Repair(tname, fname, RepairKind.RESTORED))
            for tdir in sorted(p for p in self.tokendir.iterdir() if p.is_dir()) if alone else ():
                known = manifest.get(tdir.name, {})
                for path in sorted(tdir.iterdir()):
                    if path.name in known or path.name in _NEVER_SET_ASIDE or not path.is_file():
                        continue
                    if path.name.endswith(".lock"):
                        continue
                    try:
                        young = time.time() - path.stat().st_mtime < _SET_ASIDE_AGE_SECONDS
                    except FileNotFoundError:
                        continue
                    data = self._read_settled(path)
                    if young or data is None or file_is_sound(path.name, data):
                        continue
                    self._set_aside(tdir, path)
                    repairs.append(Repair(tdir.name, path.name, RepairKind.SET_ASIDE))
        return repairs

    def _set_aside(self, tdir: Path, path: Path) -> None:
        aside = self.backup / "set-aside" / tdir.name
        aside.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(path, aside / f"{path.name}.{time.time_ns()}")
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(".lock").unlink()
