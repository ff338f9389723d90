"""SoftHSM2 token stores: a config in a directory, and tokens initialised without PINs in argv.

softhsm2-util takes PINs only on the command line or a terminal, so tokens are initialised
through the module itself (C_InitToken, then C_InitPIN as the security officer).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hsmkm import errors
from hsmkm.atomic import write_atomic

if TYPE_CHECKING:
    from hsmkm.keys.token import TokenModule

SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_module() -> str:
    """The path of the SoftHSM2 module on this machine."""
    for path in SOFTHSM_MODULE_CANDIDATES:
        if os.path.exists(path):
            return path
    raise errors.ModuleNotFound("SoftHSM2 is not installed (package softhsm2)")


def _store_config_text(tokens: Path) -> str:
    return f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"


def write_store_config(directory: Path) -> Path:
    """Make a SoftHSM2 token store in ``directory``; returns the path of its config."""
    tokens = directory.absolute() / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    write_atomic(conf, _store_config_text(tokens).encode(), 0o644)
    return conf


def ensure_store_config(conf: Path) -> None:
    """Point the config at the token store beside it (a moved or copied home's own store).

    SoftHSM2 wants an absolute token directory, so a home that moved would still read the
    store where it was made; this rewrites the config when the two differ.
    """
    tokens = conf.parent.absolute() / "tokens"
    want = _store_config_text(tokens)
    try:
        if conf.read_text() == want:
            return
    except FileNotFoundError:
        if not tokens.is_dir():
            return
    except OSError as exc:
        raise errors.TokenError(f"{conf}: unreadable SoftHSM2 configuration ({exc.strerror})") from None
    try:
        write_atomic(conf, want.encode(), 0o644)
    except OSError as exc:
        raise errors.TokenError(f"{conf}: cannot write the SoftHSM2 configuration ({exc.strerror})") from None


def init_token(module: TokenModule, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise the store's free slot as a token with this label and PINs."""
    import pkcs11

    from hsmkm.keys.pkcs11 import Pkcs11Module, mapped_errors

    if not isinstance(module, Pkcs11Module):
        raise TypeError("a SoftHSM2 token is made through its PKCS#11 module")
    if label in module.token_labels():
        raise errors.AlreadyExists(f"a token labelled '{label}' already exists")
    with module.lock:
        free = [
            s
            for s in module.lib.get_slots(token_present=True)
            if not (s.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED)
        ]
        if not free:
            raise errors.TokenError("no free slot in the SoftHSM2 store")
        slot_id = free[0].slot_id
        cdll = ctypes.CDLL(module.path)
        fn = cdll.C_InitToken
        fn.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        fn.restype = ctypes.c_ulong
        so = so_pin.encode()
        rv = fn(slot_id, so, len(so), label.encode().ljust(32, b" ")[:32])
        if rv != 0:
            raise errors.TokenError(f"C_InitToken for '{label}' failed (CKR 0x{rv:x})")
    token = module.find_token(label=label)
    with module.lock, mapped_errors(f"token '{label}'"), token.open(rw=True, so_pin=so_pin) as session:
        session.init_pin(user_pin)
    module.changed()


class SoftHsmProvisioner:
    """The ``TokenProvisioner`` of SoftHSM2: its module, stores in a directory, tokens in them."""

    def module_path(self) -> str:
        return find_softhsm_module()

    def make_store(self, directory: Path) -> Path:
        """A token store in ``directory``; returns the path of its config."""
        return write_store_config(directory)

    def ensure_config(self, conf: Path) -> None:
        ensure_store_config(conf)

    def init_token(self, module: TokenModule, label: str, so_pin: str, user_pin: str) -> None:
        init_token(module, label, so_pin, user_pin)
