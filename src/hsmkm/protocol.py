"""The messages between an enrolling client and the KM: plain data that can travel.

The private keys in a response are sealed under a key derived from the one-time code,
which only the user and (as a hash) the KM know.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmkm import errors
from hsmkm.keys.base import PrivateKey


@dataclass(frozen=True)
class EnrollRequest:
    email: str
    code: str
    csr_der: bytes


@dataclass(frozen=True)
class SealedKey:
    """A private key (PKCS#8) sealed under the code key, with its certificate."""

    cert_der: bytes
    sealed: bytes


@dataclass(frozen=True)
class EnrollResponse:
    email: str
    sign_cert_der: bytes
    encryption: SealedKey
    ca_cert_der: bytes
    salt: bytes
    history: list[SealedKey] = field(default_factory=list)


def normalize_code(code: str) -> str:
    """Codes are base32: drop separators and fold the look-alikes people type."""
    return re.sub(r"[\s-]", "", code).upper().replace("0", "O").replace("1", "I").replace("8", "B")


def code_key(code: str, salt: bytes) -> bytes:
    """The AES key that protects a response's private keys in transit."""
    return HKDF(hashes.SHA256(), 32, salt=salt, info=b"hsmkm-enroll-transport-v1").derive(normalize_code(code).encode())


def seal_key(transport_key: bytes, key: PrivateKey, cert_der: bytes) -> SealedKey:
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(12)
    return SealedKey(cert_der, nonce + AESGCM(transport_key).encrypt(nonce, pkcs8, cert_der))


def open_key(code: str, response: EnrollResponse, item: SealedKey) -> PrivateKey:
    """Client side: the private key in ``item``, opened with the code."""
    key = code_key(code, response.salt)
    try:
        pkcs8 = AESGCM(key).decrypt(item.sealed[:12], item.sealed[12:], item.cert_der)
    except (InvalidTag, ValueError):  # ValueError: a nonce cut short
        raise errors.SignatureInvalid("the enrollment response does not open with this code") from None
    return serialization.load_der_private_key(pkcs8, None)  # type: ignore[return-value]
