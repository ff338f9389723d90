"""The worker's one KM: opened once, and every token or database call made on one thread.

SoftHSM2 under python-pkcs11 does no locking (C_Initialize without mutex callbacks), and two
threads calling it at once crashed the process; so a worker serialises its calls on a
single-thread executor and gets its parallelism from other worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from hsmkm.km.manager import KeyManager

P = ParamSpec("P")
T = TypeVar("T")


class KmRunner:
    """A KeyManager living on its own thread; ``call`` runs a function of it there."""

    def __init__(self, opener: Callable[[], KeyManager]) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsmkm-km")
        try:
            self.km: KeyManager = self._executor.submit(opener).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(km, *args)`` on the KM thread. A request cancelled meanwhile (its client gone)
        does not stop the call: a started transaction commits or rolls back whole."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, self.km, *args))

    def close(self) -> None:
        """Wait for the calls in flight, then close the database and log out of the token."""
        self._executor.submit(_close, self.km).result()
        self._executor.shutdown(wait=True)


def _close(km: KeyManager) -> None:
    with contextlib.suppress(Exception):
        km.close()
    km.session.close()
