"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], mode: int = 0o644, durable: bool = True, exclusive: bool = False
) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it is fsynced and renamed over ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. ``durable=False``
    skips the fsyncs, for files that can be rebuilt from the database. ``exclusive=True``
    links the file into place instead, failing with FileExistsError if ``path`` exists, so a
    new file never replaces one that appeared meanwhile.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, target)
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(target.parent)


def write_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o644, durable: bool = True, exclusive: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically with the given permission bits."""
    with atomic_writer(path, mode, durable, exclusive) as fh:
        fh.write(data)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
