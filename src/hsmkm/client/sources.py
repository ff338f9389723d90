"""Where a client's outside knowledge comes from: the KM CA's CRLs and recipients' certificates.

The client sees only these protocols; the command line chooses the implementation (a KM home
on this machine today, an HTTPS server or an LDAP directory later), in the manner of
certvalidator's fetchers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509


@dataclass(frozen=True)
class CrlSet:
    """The current full CRL and, when one is published, the delta CRL (DER, unverified)."""

    full: bytes
    delta: bytes | None


class CrlSource(Protocol):
    """The KM CA's published CRLs."""

    def fetch_crls(self) -> CrlSet:
        """The CRLs as published now; ``errors.Unreachable`` when there are none to get."""
        ...


class CertDirectory(Protocol):
    """Recipients' current certificates, as the KM publishes them."""

    def encryption_certificate(self, email: str) -> x509.Certificate:
        """The address's current encryption certificate (not yet validated: the caller
        does); ``errors.NotFound`` when there is none, ``errors.MalformedInput`` when damaged."""
        ...
