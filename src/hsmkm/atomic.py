"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str],
    mode: int = 0o644,
    durable: bool = True,
    exclusive: bool = False,
    temp_dir: str | os.PathLike[str] | None = None,
) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it is fsynced and renamed over ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. ``durable=False``
    skips the fsyncs, for files that can be rebuilt from the database. ``exclusive=True``
    links the file into place instead, failing with FileExistsError if ``path`` exists, so a
    new file never replaces one that appeared meanwhile. ``temp_dir`` (on the same file
    system) holds the temporary file instead of the target's folder: for folders too large
    to list on every write. A killed earlier writer's temporary file of the same name is
    removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    where = Path(temp_dir) if temp_dir is not None else target.parent
    where.mkdir(parents=True, exist_ok=True)
    sweep_temps(where, target.name)
    fd, tmp = _locked_temp(target, where)
    try:
        os.fchmod(fd, mode)
        # The descriptor (and with it the lock) stays open until the rename is done.
        with os.fdopen(fd, "wb", closefd=False) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fd)
        if exclusive:
            os.link(tmp, target)
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    if durable:
        _fsync_dir(target.parent)


def _locked_temp(target: Path, where: Path) -> tuple[int, str]:
    """A new temporary file beside ``target``, flock'ed for as long as it is being written.

    The lock tells ``sweep_temps`` that its writer is alive; a temp that a sweep removed
    between its creation and the lock (its link count is then 0) is made again.
    """
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=where)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)


def sweep_temps(directory: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove temporary files left in ``directory`` by writers that died (kill -9, power loss).

    Only ``.NAME.*.tmp`` files (of ``name``, or of any name) whose lock nobody holds: a live
    writer's file is never touched. Returns what was removed.
    """
    removed: list[Path] = []
    prefix = f".{name}." if name is not None else "."
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for tmp in (Path(directory) / n for n in names):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o644,
    durable: bool = True,
    exclusive: bool = False,
    temp_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically with the given permission bits."""
    with atomic_writer(path, mode, durable, exclusive, temp_dir) as fh:
        fh.write(data)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
