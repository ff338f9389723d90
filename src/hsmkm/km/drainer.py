"""The outbox drainer of a long-running KM process (``hsmkm serve``): drains every few
seconds, and while a directory is down waits longer each time (the publisher's own backoff
refuses at once until then)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from hsmkm.km import directory
from hsmkm.km.config import Home
from hsmkm.km.publisher import Publisher
from hsmkm.store.database import Database

INTERVAL_S = 2.0
BACKOFF_MAX_S = 60.0


def next_wait(last_wait: float, failed: bool) -> float:
    """The pause before the next drain: the interval, doubled after each failure up to the bound."""
    if not failed:
        return INTERVAL_S
    return min(BACKOFF_MAX_S, max(INTERVAL_S, last_wait * 2))


class Drainer:
    """A daemon thread draining the home's outbox into ``publisher`` until ``stop()``."""

    def __init__(self, root: Path, publisher: Publisher, report: Callable[[str], None]) -> None:
        self.root = root
        self.publisher = publisher
        self.report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hsmkm-outbox-drainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        db = Database.open(Home(self.root).database)
        wait = INTERVAL_S
        last_error: str | None = None
        while not self._stop.is_set():
            try:
                done = directory.drain_outbox(db, self.publisher)
                error = done.error
            except Exception as exc:  # the drainer outlives one bad drain; it is reported
                error = f"{type(exc).__name__}: {exc}"
            if error is not None and error != last_error:
                self.report(f"hsmkm: warning: publication deferred: {error}")
            elif error is None and last_error is not None:
                self.report("hsmkm: publication outbox drained")
            last_error = error
            wait = next_wait(wait, error is not None)
            self._stop.wait(wait)
