"""Where the KM's published artifacts go: the CA certificate, CRLs and users' certificates.

The database is the record; a publisher receives what derives from it after the commit (and
again when a later command or ``directory sync`` finds it queued), so every method brings the
destination in line with what it is given and is safe to call again with the same thing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.store.repos.crls import CrlKind

__all__ = ["CrlKind", "Deferred", "Publisher"]


class Deferred(errors.Unreachable):
    """This process does not publish to that destination (it lacks the directory's bind
    password): the queued row waits for a process that does. Not a failure of the directory."""


class Publisher(Protocol):
    """One destination of publication (files under the home, an LDAP directory)."""

    def prepare(self) -> None:
        """Make the destination ready for a new KM (nothing published yet)."""

    def ca_certificate(self, der: bytes) -> None:
        """Publish the KM's CA certificate."""

    def crl(self, kind: CrlKind, number: int, der: bytes) -> bool:
        """Install the CRL unless one numbered at least ``number`` is there; False if so."""

    def crl_location(self, kind: CrlKind) -> str:
        """Where the CRL of this kind is published (for messages)."""

    def locked(self) -> AbstractContextManager[None]:
        """Held while the users' state is read and published, so that a publisher that read
        before a revocation never writes after the revoker's own withdrawal."""

    def user(self, email: str, certs: Mapping[CertKind, bytes]) -> None:
        """Make the user's entry hold exactly these current certificates (none: withdrawn).
        Raises BadInput for an address this destination cannot name an entry after."""

    def user_entries(self, entries: Iterable[tuple[str, Mapping[CertKind, bytes]]]) -> int:
        """``user`` for many entries at once (a full sync); returns how many."""

    def prune(self, keep: Collection[str]) -> None:
        """Drop every user entry except those of the addresses in ``keep``."""
