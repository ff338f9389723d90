"""Opening the KM from the command line: the PIN source, then the KeyManager."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hsmkm.atomic import sweep_temps
from hsmkm.cli.context import CliContext
from hsmkm.km import directory
from hsmkm.km.config import Home, KmConfig
from hsmkm.km.manager import KeyManager
from hsmkm.km.publisher import Publisher
from hsmkm.km.publishers import publisher_for
from hsmkm.store.database import Database


def open_km(cli: CliContext, actor: str = "operator") -> KeyManager:
    """The KM at the home, logged in with the PIN from --pin-source (or the trial PIN file)."""
    return open_km_at(cli, cli.home, cli.pin_source, actor)


def open_km_at(cli: CliContext, root: Path, pin_source: str | None, actor: str) -> KeyManager:
    """The KM at ``root``, logged in with the PIN from ``pin_source`` (else the home's own)."""
    return open_km_and_pin(cli, root, pin_source, actor)[0]


def open_km_and_pin(cli: CliContext, root: Path, pin_source: str | None, actor: str) -> tuple[KeyManager, str]:
    """``open_km_at``, and the PIN it logged in with (for a server handing it to its workers)."""
    config = KmConfig.load(Home(root))
    spec = pin_source or config.km_pin_source
    pin = cli.secret(spec, "KM token PIN")
    km = KeyManager.open(root, pin, actor=actor, publisher=publisher_for(root, cli.secret))
    for repair in km.repairs:
        cli.warn(repair.describe())
    settle(km)
    return km, pin


@dataclass
class KmFiles:
    """The KM's files without its token: for commands that read the database only."""

    home: Home
    config: KmConfig
    db: Database
    publisher: Publisher


def open_km_files(cli: CliContext) -> KmFiles:
    """The home and database, without loading the module or logging in (no PIN is read).

    A login makes SoftHSM2 rewrite the token's file, so commands that need no key skip it.
    """
    if cli.pin_source is not None:
        cli.secret(cli.pin_source, "KM token PIN")  # a PIN source given is still checked
    home = Home(cli.home)
    config = KmConfig.load(home)
    files = KmFiles(home, config, Database.open(home.database), publisher_for(cli.home, cli.secret))
    settle(files)
    return files


class _Settleable(Protocol):
    @property
    def home(self) -> Home: ...

    @property
    def db(self) -> Database: ...

    @property
    def publisher(self) -> Publisher: ...


def settle(km: _Settleable) -> None:
    """What an earlier run left half-done: queued directory files, temporary files."""
    directory.drain_outbox(km.db, km.publisher)
    for folder in km.home.written_dirs():
        if folder.is_dir():
            sweep_temps(folder)
