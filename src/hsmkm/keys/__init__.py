"""Where private keys live, behind one interface (``hsmkm.keys.base.Keystore``).

Whether a keystore is an .epf file or a PKCS#11 token is decided here, once, from its name.
"""

from __future__ import annotations

from pathlib import Path

from hsmkm.keys.epf import EpfKeystore
from hsmkm.keys.token_keystore import TokenKeystore
from hsmkm.keys.uri import Pkcs11Uri, is_pkcs11_uri

AnyKeystore = EpfKeystore | TokenKeystore


def open_keystore(ref: str, secret: str) -> AnyKeystore:
    """Open an existing keystore: a ``pkcs11:`` URI (secret = PIN) or an .epf path (password)."""
    if is_pkcs11_uri(ref):
        return TokenKeystore.open(Pkcs11Uri.parse(ref), secret)
    return EpfKeystore.open(Path(ref), secret)


def new_keystore(ref: str, secret: str) -> AnyKeystore:
    """A keystore to enroll into: a new .epf (refused if the file exists) or a token."""
    if is_pkcs11_uri(ref):
        return TokenKeystore.open(Pkcs11Uri.parse(ref), secret)
    return EpfKeystore.create(Path(ref), secret)
