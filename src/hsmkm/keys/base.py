"""The one key interface: a keystore holds a user's keys with their certificates.

Callers (cms, km, client) see only this module's types. A private key is always a
cryptography ``RSAPrivateKey`` or ``EllipticCurvePrivateKey``: for an .epf it is a software
key; for a token it is a subclass whose operations run on the token. Which backend holds
a keystore is decided once, from its path or URI, by ``hsmkm.keys.open_keystore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyRole(str, Enum):
    SIGN = "sign"
    ENCRYPT = "encrypt"
    CA = "ca"


@dataclass(frozen=True)
class KeyEntry:
    """A private key and the certificate for it."""

    key: PrivateKey
    certificate: x509.Certificate
    role: KeyRole


class EntriesByRole:
    """signing_entry and encryption_entries for a keystore that can list its entries by role,
    newest certificate first."""

    def _entries(self, role: KeyRole) -> list[KeyEntry]:
        raise NotImplementedError

    def signing_entry(self) -> KeyEntry | None:
        """The newest signing key with its certificate."""
        entries = self._entries(KeyRole.SIGN)
        return entries[0] if entries else None

    def encryption_entries(self) -> list[KeyEntry]:
        """Encryption keys, the current one first, then the history."""
        return self._entries(KeyRole.ENCRYPT)


class Keystore(Protocol):
    """A user's keys: one signing key, current and historical encryption keys, CA certs."""

    def signing_entry(self) -> KeyEntry | None:
        """The current signing key and certificate, if any."""

    def encryption_entries(self) -> list[KeyEntry]:
        """All encryption keys with certificates: the current one first, then older ones."""

    def ca_certificates(self) -> list[x509.Certificate]:
        """The CA certificates this keystore trusts (the KM's)."""


def role_of(cert: x509.Certificate) -> KeyRole:
    """What a certificate's key is for, from its key usage."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return KeyRole.SIGN
    if ku.key_cert_sign:
        return KeyRole.CA
    if ku.key_encipherment or ku.key_agreement:
        return KeyRole.ENCRYPT
    return KeyRole.SIGN
