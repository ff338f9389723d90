"""The token interface km/ and cli/ use: the KM token, the recovery token and officers' tokens.

These are protocols only; the PKCS#11 backend (``hsmkm.keys.pkcs11``) implements them and is
loaded lazily, by the factories in ``hsmkm.keys`` (``open_token``, ``load_module``), so that
importing cms/, x509/ or km/ loads no python-pkcs11.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.softhsm_store import Repair, TokenStore

if TYPE_CHECKING:
    from hsmkm.keys.base import PrivateKey

__all__ = ["Repair", "TokenStore"]  # the store check's records, reported by km/


class ObjectKind(str, Enum):
    """The class of a token object (PKCS#11 CKO_*)."""

    PRIVATE_KEY = "private-key"
    PUBLIC_KEY = "public-key"
    SECRET_KEY = "secret-key"
    CERTIFICATE = "certificate"
    DATA = "data"


@dataclass(frozen=True)
class KeyAttributes:
    """The custody-relevant attributes of a key object."""

    label: str
    key_class: str
    key_type: str
    sensitive: bool | None
    extractable: bool | None
    always_sensitive: bool | None
    never_extractable: bool | None
    token: bool
    usages: tuple[str, ...]


class SecretKey(Protocol):
    """A secret key on a token: AES-GCM or HMAC-SHA256, computed inside the token."""

    label: str

    def encrypt_gcm(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce(12) ‖ ciphertext ‖ tag(16)."""

    def decrypt_gcm(self, blob: bytes, aad: bytes) -> bytes: ...

    def hmac_sha256(self, data: bytes) -> bytes: ...

    def destroy(self) -> None: ...


class DataObjectRef(Protocol):
    """One small private data object as read: its label, and what changes or destroys it."""

    @property
    def label(self) -> str: ...


class Token(Protocol):
    """A logged-in session on one token."""

    label: str
    serial: str
    is_open: bool

    @property
    def lock(self) -> threading.RLock:
        """Held around every call into the token's module."""

    @property
    def module(self) -> TokenModule: ...

    def what(self) -> str:
        """How messages name this token."""

    def close(self) -> None: ...

    def has_object(self, label: str, kind: ObjectKind = ObjectKind.PRIVATE_KEY) -> bool: ...

    def private_key(self, label: str | None = None, key_id: bytes | None = None) -> PrivateKey:
        """A cryptography private key whose operations run on the token."""

    def secret_key(self, label: str) -> SecretKey: ...

    def private_key_labels(self) -> list[tuple[str, bytes]]:
        """(label, CKA_ID) of every private key on the token."""

    def attributes(self, label: str, kind: ObjectKind) -> KeyAttributes: ...

    def generate_keypair(
        self,
        alg: KeyAlgorithm,
        label: str,
        key_id: bytes,
        *,
        sign: bool,
        decrypt: bool,
        derive: bool = False,
        store: bool = True,
    ) -> PrivateKey:
        """A key pair made on the token: private half sensitive and never extractable."""

    def generate_aes_key(self, label: str, *, encrypt: bool = True) -> SecretKey: ...

    def generate_hmac_key(self, label: str) -> SecretKey: ...

    def destroy(self, label: str, kind: ObjectKind) -> int:
        """Destroy every object of this kind and label; returns how many."""

    def random(self, n: int) -> bytes: ...

    def set_pin(self, old: str, new: str) -> None: ...

    # Small private data objects (see ``hsmkm.keys.pkcs11.data_objects``).
    def data_create(self, application: str, label: str) -> DataObjectRef: ...

    def data_find(self, application: str) -> list[DataObjectRef]: ...

    def data_reread(self, obj: DataObjectRef) -> DataObjectRef | None: ...

    def data_relabel(self, obj: DataObjectRef, label: str) -> DataObjectRef: ...

    def data_destroy(self, obj: DataObjectRef) -> None: ...


class TokenModule(Protocol):
    """A loaded token module (a PKCS#11 library with, for SoftHSM2, its token store)."""

    path: str
    store: TokenStore | None

    def open_token(
        self, pin: str, label: str | None = None, serial: str | None = None, slot_id: int | None = None
    ) -> Token:
        """A logged-in read/write session on one token, opened once per process."""

    def token_labels(self) -> list[str]: ...

    def take_repairs(self) -> list[Repair]:
        """The repairs the store check made at load, each reported once."""


class TokenProvisioner(Protocol):
    """What the key ceremony needs of a SoftHSM2 store beyond a module: make tokens in it."""

    def init_token(self, module: TokenModule, label: str, so_pin: str, user_pin: str) -> None: ...


ModuleLoader = Callable[[str, "str | None"], TokenModule]
