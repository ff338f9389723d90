"""Where private keys live, behind one interface: keystores (``hsmkm.keys.base.Keystore``) and
tokens (``hsmkm.keys.token``).

Whether a keystore is an .epf file or a PKCS#11 token is decided here, once, from its name;
a token is opened here from its RFC 7512 URI. The backends are imported only when one is
used, so that importing cms/ or x509/ loads no python-pkcs11.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsmkm import errors
from hsmkm.keys.uri import Pkcs11Uri, is_pkcs11_uri

if TYPE_CHECKING:
    from hsmkm.keys.epf import EpfKeystore
    from hsmkm.keys.softhsm import SoftHsmProvisioner
    from hsmkm.keys.token import Token, TokenModule
    from hsmkm.keys.token_keystore import TokenKeystore

    AnyKeystore = EpfKeystore | TokenKeystore


def __getattr__(name: str) -> Any:
    if name == "AnyKeystore":
        from hsmkm.keys.epf import EpfKeystore
        from hsmkm.keys.token_keystore import TokenKeystore

        return EpfKeystore | TokenKeystore
    raise AttributeError(name)


def open_keystore(ref: str, secret: str) -> AnyKeystore:
    """Open an existing keystore: a ``pkcs11:`` URI (secret = PIN) or an .epf path (password)."""
    if is_pkcs11_uri(ref):
        from hsmkm.keys.token_keystore import TokenKeystore

        return TokenKeystore.open(Pkcs11Uri.parse(ref), secret)
    from hsmkm.keys.epf import EpfKeystore

    return EpfKeystore.open(Path(ref), secret)


def new_keystore(ref: str, secret: str) -> AnyKeystore:
    """A keystore to enroll into: a new .epf (refused if the file exists) or a token."""
    if is_pkcs11_uri(ref):
        from hsmkm.keys.token_keystore import TokenKeystore

        return TokenKeystore.open(Pkcs11Uri.parse(ref), secret)
    from hsmkm.keys.epf import EpfKeystore

    return EpfKeystore.create(Path(ref), secret)


def load_module(path: str, softhsm_config: str | None = None) -> TokenModule:
    """The token module (PKCS#11 library) at ``path``, loaded once per process.

    ``softhsm_config`` names a SoftHSM2 store: it is handed to the module's initialisation
    (never left in the environment); without it the module keeps the store it has.
    """
    from hsmkm.keys.pkcs11 import Pkcs11Module

    return Pkcs11Module.load(path, softhsm_config)


def open_token(
    uri: Pkcs11Uri | str, pin: str, *, module_path: str | None = None, softhsm_config: str | None = None
) -> Token:
    """A logged-in session on the token an RFC 7512 URI names (``token``, ``serial``, ``slot-id``;
    the library from ``module-path``, else ``module_path``)."""
    parsed = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
    path = parsed.module_path or module_path
    if not path:
        raise errors.BadInput("the token URI needs ?module-path=")
    slot = int(parsed.slot_id) if parsed.slot_id is not None else None
    return load_module(path, softhsm_config).open_token(pin, label=parsed.token, serial=parsed.serial, slot_id=slot)


def token_provisioner() -> SoftHsmProvisioner:
    """SoftHSM2 stores: the module on this machine, stores in a directory, tokens made in them."""
    from hsmkm.keys.softhsm import SoftHsmProvisioner

    return SoftHsmProvisioner()
