"""Several publishers as one: the home's files first, then the directory servers.

The files are always written (the HTTP server and ``directory show`` read them); a directory
that is down makes the call raise ``errors.Unreachable`` after the others were served, so the
outbox keeps the row for a later drain.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.km.publisher import CrlKind, Deferred, Publisher


class FanOut:
    def __init__(self, primary: Publisher, others: Sequence[Publisher]) -> None:
        self.primary = primary
        self.others = list(others)

    def _rest(self, call: Callable[[Publisher], Any]) -> None:
        failed: errors.Unreachable | None = None
        for other in self.others:
            try:
                call(other)
            except errors.Unreachable as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def prepare(self) -> None:
        self.primary.prepare()
        self._rest(lambda p: p.prepare())

    def ca_certificate(self, der: bytes) -> None:
        self.primary.ca_certificate(der)
        self._rest(lambda p: p.ca_certificate(der))

    def crl(self, kind: CrlKind, number: int, der: bytes) -> bool:
        installed = self.primary.crl(kind, number, der)
        with self.primary.locked():  # a directory's read-compare-write of the CRL number
            self._rest(lambda p: p.crl(kind, number, der))
        return installed

    def crl_location(self, kind: CrlKind) -> str:
        return self.primary.crl_location(kind)

    def locked(self) -> AbstractContextManager[None]:
        return self.primary.locked()

    def user(self, email: str, certs: Mapping[CertKind, bytes]) -> None:
        self.primary.user(email, certs)
        self._rest(lambda p: p.user(email, certs))

    def user_entries(self, entries: Iterable[tuple[str, Mapping[CertKind, bytes]]]) -> int:
        listed = list(entries)
        n = self.primary.user_entries(listed)
        self._rest(lambda p: p.user_entries(listed))
        return n

    def prune(self, keep: Collection[str]) -> None:
        self.primary.prune(keep)
        self._rest(lambda p: p.prune(keep))


class Elsewhere:
    """A destination this process leaves to another (the serve process's drainer): every
    call raises ``Deferred``, so the outbox keeps the row."""

    def __init__(self, what: str) -> None:
        self.what = what

    def _defer(self) -> Deferred:
        return Deferred(f"{self.what} is published by a process that holds its bind password")

    def prepare(self) -> None:
        raise self._defer()

    def ca_certificate(self, der: bytes) -> None:
        raise self._defer()

    def crl(self, kind: CrlKind, number: int, der: bytes) -> bool:
        raise self._defer()

    def crl_location(self, kind: CrlKind) -> str:
        return self.what

    def locked(self) -> AbstractContextManager[None]:
        return nullcontext()

    def user(self, email: str, certs: Mapping[CertKind, bytes]) -> None:
        raise self._defer()

    def user_entries(self, entries: Iterable[tuple[str, Mapping[CertKind, bytes]]]) -> int:
        raise self._defer()

    def prune(self, keep: Collection[str]) -> None:
        raise self._defer()
