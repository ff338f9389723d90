"""The file publisher: the KM's artifacts as files under ``HOME/pub/`` (served as they are)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path

from hsmkm import errors
from hsmkm.atomic import sweep_temps, write_atomic
from hsmkm.certnames import CertKind, cert_files
from hsmkm.km.config import Home
from hsmkm.km.publisher import CrlKind
from hsmkm.x509.crlparse import parse_crl


class FilePublisher:
    """``pub/ca.crt``, ``pub/crl/{full,delta}.crl`` and ``pub/certs/EMAIL.{enc,sign}.crt``."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def prepare(self) -> None:
        for sub in (self.home.crl_dir, self.home.certs_dir):
            sub.mkdir(parents=True, exist_ok=True)

    def ca_certificate(self, der: bytes) -> None:
        with contextlib.suppress(OSError):
            if self.home.ca_cert.read_bytes() == der:
                return  # published again (a sync): the file stays as it is
        write_atomic(self.home.ca_cert, der)

    def crl_path(self, kind: CrlKind) -> Path:
        return self.home.crl_dir / f"{kind.value}.crl"

    def crl_location(self, kind: CrlKind) -> str:
        return str(self.crl_path(kind))

    def crl(self, kind: CrlKind, number: int, der: bytes) -> bool:
        """Rename the CRL into place unless the one there has a number at least ``number``."""
        path = self.crl_path(kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / ".publish.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                try:
                    current = parse_crl(path.read_bytes()).number or 0
                except errors.MalformedInput:
                    current = 0
                if current >= number:
                    return False  # a concurrent publisher already put a newer CRL there
            write_atomic(path, der, 0o644)
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.home.temp_dir.mkdir(parents=True, exist_ok=True)
        with open(self.home.temp_dir / ".directory.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def user(self, email: str, certs: Mapping[CertKind, bytes]) -> None:
        for kind, path in cert_files(self.home.certs_dir, email).items():
            der = certs.get(kind)
            if der is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            try:
                if path.read_bytes() == der:
                    continue
            except OSError:
                pass
            # Derived from the database, so no fsync: readers still see whole files (rename).
            # The temporary file is made outside pub/certs, too large to list on each write.
            write_atomic(path, der, 0o644, durable=False, temp_dir=self.home.temp_dir)

    def user_entries(self, entries: Iterable[tuple[str, Mapping[CertKind, bytes]]]) -> int:
        n = 0
        for email, certs in entries:
            with contextlib.suppress(errors.BadInput):  # an address no file may be named after
                self.user(email, certs)
                n += 1
        return n

    def prune(self, keep: Collection[str]) -> None:
        certs_dir = self.home.certs_dir
        wanted: set[str] = set()
        for email in keep:
            with contextlib.suppress(errors.BadInput):  # an address no file is named after
                wanted.update(p.name for p in cert_files(certs_dir, email).values() if p.exists())
        if certs_dir.is_dir():
            for path in certs_dir.glob("*.crt"):
                if path.name not in wanted:
                    path.unlink()
        sweep_temps(certs_dir)  # temporary files of earlier releases, written beside the certificates
