"""PKCS#11 backend of the token interface (``hsmkm.keys.token``): modules, sessions, and token
keys that look like cryptography keys. Only ``hsmkm.keys`` (its factories) and tests import it."""

from hsmkm.keys.pkcs11.errmap import mapped_errors
from hsmkm.keys.pkcs11.keyobjects import (
    TokenECPrivateKey,
    TokenPrivateKey,
    TokenRSAPrivateKey,
    TokenSecretKey,
)
from hsmkm.keys.pkcs11.oaep import oaep_decode
from hsmkm.keys.pkcs11.registry import Pkcs11Module
from hsmkm.keys.pkcs11.session import TokenSession
from hsmkm.keys.token import KeyAttributes

__all__ = [
    "KeyAttributes",
    "Pkcs11Module",
    "TokenECPrivateKey",
    "TokenPrivateKey",
    "TokenRSAPrivateKey",
    "TokenSecretKey",
    "TokenSession",
    "mapped_errors",
    "oaep_decode",
]
