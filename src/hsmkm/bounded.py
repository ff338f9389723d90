"""Reading files named from outside, with bounds: only regular files (a FIFO would block, a
device would never end), and never more than the caller's limit in memory."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from hsmkm import errors

MAX_SECRET = 4 << 10  # a PIN or password file
MAX_KEYSTORE = 16 << 20  # an .epf
MAX_SMALL_FILE = 16 << 20  # certificates, CSRs, CSV files read whole
MAX_CRL = 1 << 30  # a CRL of some millions of entries


def open_regular(path: str | os.PathLike[str], what: str) -> BinaryIO:
    """A regular file opened for reading; anything else (FIFO, device, directory) is refused
    without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise errors.NotFound(f"{what}: no file {path}") from None
    except OSError as exc:
        raise errors.BadInput(f"{what}: cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO or a device)"
            raise errors.BadInput(f"{what}: {path} is {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The whole of a regular file of at most ``limit`` octets."""
    with open_regular(path, what) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise errors.BadInput(f"{what}: cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise errors.BadInput(f"{what}: {Path(path)} is larger than {_size(limit)}")
    return data


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
