"""The PKCS#11 modules loaded in this process, and how a token is found and logged in to.

Calls into one module are serialised by a per-module lock: python-pkcs11 initialises the
module with C_Initialize(NULL), so the module does no locking of its own (SoftHSM2 crashed
with two threads signing at once). Parallelism comes from worker processes, each loading
the module afresh (see ``Pkcs11Module.load``, which re-initialises after a fork).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn

import pkcs11
import pkcs11.exceptions as p11e

from hsmkm import errors
from hsmkm.keys.pkcs11.errmap import mapped_errors
from hsmkm.keys.pkcs11.session import TokenSession, pin_digest
from hsmkm.keys.softhsm_store import Repair, TokenStore

SOFTHSM2_CONF = "SOFTHSM2_CONF"
_FIND_TRIES = 6


# How a SoftHSM2 store is handed to the module. SoftHSM2 2.6 reads its configuration from
# the SOFTHSM2_CONF variable, and only inside C_Initialize. So the variable is set in the C
# environment (putenv, not os.environ) just around that call, under the registry's or the
# module's lock, and put back as it was: nothing else in this process, and no child it
# starts, ever sees a home's store in its environment.
#
# One process and several stores, as measured with python-pkcs11 0.10 and SoftHSM2 2.6.1:
# a second pkcs11.lib() of the same library file silently joins the first instance (and its
# store); a private copy of the .so per store does load an independent second instance, but
# that copies a vendor's library and leaves two instances sharing OpenSSL's global state.
# hsmkm keeps one instance per library file instead, and re-initialises it for another store
# (C_Finalize, then C_Initialize with the other config): the first store's sessions end and
# are made unusable (``_EndedSession``) — one live store per library at a time, which is what
# a KM process needs (its home's store; officers' and users' tokens on it or on other
# libraries).
@contextlib.contextmanager
def initializing_with(config: str | None) -> Iterator[None]:
    """Around C_Initialize: SOFTHSM2_CONF is ``config`` (None: the environment's, untouched)."""
    if config is None:
        yield
        return
    before = os.environ.get(SOFTHSM2_CONF)
    os.putenv(SOFTHSM2_CONF, config)
    try:
        yield
    finally:
        if before is None:
            os.unsetenv(SOFTHSM2_CONF)
        else:
            os.putenv(SOFTHSM2_CONF, before)


class Pkcs11Module:
    """One loaded PKCS#11 module in this process, with the lock that serialises calls into it."""

    def __init__(self, path: str, lib: Any, config: str | None, guarded: bool = False) -> None:
        self.path = path
        self.lib = lib
        self.config = config
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self._tokens: dict[tuple[str, str], TokenSession] = {}
        # A SoftHSM2 file store named by ``config`` is checked before the module reads it,
        # and its copy refreshed after every change of token objects.
        self.store = TokenStore.of_config(config) if config and guarded else None
        self.repairs: list[Repair] = []

    def changed(self) -> None:
        """Token objects changed: refresh the store's verified copy."""
        if self.store is not None:
            with self.lock:
                self.store.refresh()

    def take_repairs(self) -> list[Repair]:
        """The repairs the store check made at load, each reported once."""
        out, self.repairs = self.repairs, []
        return out

    # The module's C state is process-wide (dlopen() maps a library file once per process,
    # whatever name it is opened by, and a second C_Initialize joins the first), so the loaded
    # modules are too: this registry mirrors that, keyed by the library's real file, and is
    # reset after a fork.
    _loaded: ClassVar[dict[str, Pkcs11Module]] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def load(cls, path: str, softhsm_config: str | None = None) -> Pkcs11Module:
        """Load (once per process) the module at ``path``.

        ``softhsm_config`` is handed to the module's C_Initialize (see ``initializing_with``);
        a module loaded with another config is finalised and initialised again (its sessions
        end). Without one, the module keeps the config it has, or reads the environment's.
        """
        key = os.path.realpath(path)
        with cls._registry_lock:
            mod = cls._loaded.get(key)
            if (
                mod is not None
                and mod.pid == os.getpid()
                and (softhsm_config is None or _same_file(mod.config, softhsm_config))
            ):
                return mod
            explicit = softhsm_config is not None
            if softhsm_config is None:
                softhsm_config = mod.config if mod is not None else os.environ.get(SOFTHSM2_CONF)
            # Only a store the caller names is guarded (a home's own), not one from the environment.
            store = TokenStore.of_config(softhsm_config) if explicit and softhsm_config else None
            repairs = store.check() if store is not None else []
            if store is not None:
                store.attach()  # held for the process's life, before the module touches the store
            if mod is not None:
                # After a fork, or for another SoftHSM2 store: start the module afresh. The
                # old sessions end, and their handles would be reused by the new module's
                # sessions, possibly on another token: they are made unusable first.
                for ended in mod._tokens.values():
                    ended.session = _EndedSession(ended.label)
                    ended.is_open = False
                mod._tokens.clear()
                with contextlib.suppress(p11e.PKCS11Error):
                    mod.lib.finalize()
                with mapped_errors(f"PKCS#11 module {path}"), initializing_with(softhsm_config):
                    mod.lib.initialize()
                fresh = cls(path, mod.lib, softhsm_config, guarded=explicit)
            else:
                if not os.path.exists(path):
                    raise errors.ModuleNotFound(f"PKCS#11 module not found: {path}")
                try:
                    with initializing_with(softhsm_config):
                        lib = pkcs11.lib(path)  # C_Initialize runs here
                except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
                    raise errors.ModuleNotFound(f"cannot load PKCS#11 module {path}: {type(exc).__name__}") from None
                fresh = cls(path, lib, softhsm_config, guarded=explicit)
            fresh.repairs = repairs
            cls._loaded[key] = fresh
            return fresh

    def reinitialize(self) -> None:
        """C_Finalize, then C_Initialize with this module's config (re-reads the store)."""
        with self.lock, initializing_with(self.config):
            self.lib.reinitialize()

    def find_token(self, label: str | None = None, serial: str | None = None, slot_id: int | None = None) -> Any:
        """The python-pkcs11 token matching label / serial / slot id (exactly one)."""
        with self.lock, mapped_errors(f"PKCS#11 module {self.path}"):
            found = []
            for slot in self.lib.get_slots(token_present=True):
                if slot_id is not None and slot.slot_id != slot_id:
                    continue
                token = slot.get_token()
                if label is not None and token.label != label:
                    continue
                if serial is not None and token.serial.decode().strip() != serial:
                    continue
                if not (token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED):
                    continue
                found.append(token)
        what = ", ".join(
            f"{k}={v}" for k, v in (("label", label), ("serial", serial), ("slot", slot_id)) if v is not None
        )
        if not found:
            raise errors.TokenNotFound(f"no token with {what or 'any attributes'} in {self.path}")
        if len(found) > 1:
            raise errors.TokenNotFound(f"more than one token with {what}; name it by serial")
        return found[0]

    def _find_token_retrying(self, label: str | None, serial: str | None, slot_id: int | None) -> Any:
        # SoftHSM2's file store can be caught mid-write by another process (a login rewrites
        # the token file), so a token may briefly look absent or fail: look again, and
        # re-read the store when this process has no sessions to lose.
        for attempt in range(_FIND_TRIES):
            try:
                return self.find_token(label, serial, slot_id)
            except (errors.TokenNotFound, errors.TokenError):
                if attempt == _FIND_TRIES - 1:
                    raise
                time.sleep(0.02 * (2**attempt))
                with self.lock:
                    if not any(t.is_open for t in self._tokens.values()):
                        with contextlib.suppress(p11e.PKCS11Error):
                            self.reinitialize()
        raise AssertionError("unreachable")

    def token_labels(self) -> list[str]:
        with self.lock, mapped_errors(f"PKCS#11 module {self.path}"):
            return [s.get_token().label for s in self.lib.get_slots(token_present=True)]

    def open_token(
        self,
        pin: str,
        label: str | None = None,
        serial: str | None = None,
        slot_id: int | None = None,
    ) -> TokenSession:
        """A logged-in read/write session on one token, opened once per process."""
        token = self._find_token_retrying(label, serial, slot_id)
        key = (token.serial.decode().strip(), token.label)
        with self.lock:
            existing = self._tokens.get(key)
            if existing is not None and existing.is_open:
                existing.check_pin(pin)
                return existing
            for attempt in range(_FIND_TRIES):
                try:
                    with mapped_errors(f"token '{token.label}'"):
                        session = token.open(rw=True, user_pin=pin)
                    break
                except (errors.WrongPin, errors.PinLocked):
                    raise
                except errors.TokenError:
                    if attempt == _FIND_TRIES - 1:
                        raise
                    time.sleep(0.02 * (2**attempt))
            ts = TokenSession(self, token.label, key[0], session, pin_digest=pin_digest(pin))
            self._tokens[key] = ts
            return ts

    def forget(self, session: TokenSession) -> None:
        with self.lock:
            self._tokens.pop((session.serial, session.label), None)


def _same_file(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


class _EndedSession:
    """Stands in for a session whose module was re-initialised: every use is an error."""

    def __init__(self, label: str) -> None:
        self._label = label

    def __getattr__(self, name: str) -> NoReturn:
        raise errors.TokenError(f"token '{self._label}': the session ended (the PKCS#11 module was re-initialised)")
