"""Fixtures: throwaway KMs on real SoftHSM2 token stores in temporary directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from server_harness import RunningServer

BIN = Path(sys.executable).parent
HSMKM = str(BIN / "hsmkm")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document


def hsmkm(
    *args: str,
    home: Path | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> Run:
    """Run the real CLI in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HSMKM_")}
    full_env.update(env or {})
    argv = [HSMKM]
    if home is not None:
        argv += ["--home", str(home)]
    proc = subprocess.run(argv + list(args), capture_output=True, env=full_env, input=input, timeout=600)
    run = Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        raise AssertionError(f"hsmkm {' '.join(args)} exited {proc.returncode}:\n{run.stderr}")
    return run


def downgrade_database(path: Path, revision: str) -> None:
    """Take the database at ``path`` back to ``revision`` by the migrations' own downgrades (a
    database as an older hsmkm left it)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    cfg = Config()
    cfg.set_main_option("script_location", "hsmkm.store:migrations")
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def softhsm_conf(home: Path) -> Path:
    """The SoftHSM2 config of a KM home's embedded store."""
    return home / "softhsm" / "softhsm2.conf"


def softhsm_env(home: Path) -> dict[str, str]:
    return {"SOFTHSM2_CONF": str(softhsm_conf(home))}


def copy_km(template: Path, dest: Path, home: str) -> Path:
    """Copy ``template`` (a directory holding a KM home at ``home``, and whatever lies beside
    it) to ``dest``; returns the copied home. Its SoftHSM2 config is pointed at its own store
    at once, as the KM does when it first opens a moved home (``ensure_store_config``), so that
    a test touching the store in-process never reaches the template's: a KM home is
    relocatable (test_relocatable), and the copy is the template made again in place."""
    from hsmkm.keys.softhsm import ensure_store_config

    shutil.copytree(template, dest, symlinks=True, dirs_exist_ok=True)
    ensure_store_config(softhsm_conf(dest / home))
    return dest / home


def trial_pin(home: Path, name: str) -> str:
    return (home / "secrets" / f"{name}.pin").read_text().strip()


# Where a program keeps per-user state when no option names it (the CLI's ~/.hsmkm, its CRL
# cache under ~/.cache/hsmkm, a client profile under ~/.config/hsmkm, gpg's ~/.gnupg): pointed
# at throwaway directories, so no test reads or writes the real user's, and no two tests (nor
# two parallel workers) share one.
USER_DIRS = {"HOME": ".", "XDG_CONFIG_HOME": ".config", "XDG_CACHE_HOME": ".cache", "XDG_DATA_HOME": ".local/share"}
USER_STATE_VARS = ("GNUPGHOME", "SOFTHSM2_CONF")


def _point_user_dirs(mp: pytest.MonkeyPatch, root: Path) -> None:
    for var, sub in USER_DIRS.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(root / sub))
    for var in USER_STATE_VARS:
        mp.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("HSMKM_")]:
        mp.delenv(var)


@pytest.fixture(scope="session", autouse=True)
def _worker_user_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user home of this test process's own, for the session- and module-scoped fixtures
    (built before any test's own home is set)."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("user-home")
        _point_user_dirs(mp, root)
        yield root


@pytest.fixture(autouse=True)
def user_home(_worker_user_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test's own user home: $HOME and the XDG directories, empty at the start."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("user-home")
        _point_user_dirs(mp, root)
        yield root


@pytest.fixture(scope="session")
def km_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded-default KM (P-256 CA for speed), shared by read-mostly tests."""
    home = tmp_path_factory.mktemp("km") / "home"
    hsmkm("init", "--ca-subject", "CN=Test KM CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    return home


@pytest.fixture
def fresh_home(tmp_path: Path) -> Path:
    """A path for a KM that the test initialises itself."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def module_path() -> str:
    from hsmkm.keys.softhsm import find_softhsm_module

    return find_softhsm_module()


def make_token(label: str, pin: str, store: Path) -> Path:
    """A throwaway SoftHSM2 token made in this process, in the store whose config is ``store``
    (e.g. a KM home's ``softhsm/softhsm2.conf``); its SO PIN is ``so-`` + the user PIN."""
    from hsmkm import keys

    provisioner = keys.token_provisioner()
    provisioner.init_token(keys.load_module(provisioner.module_path(), str(store)), label, "so-" + pin, pin)
    return store


MakeToken = Callable[..., Path]


@pytest.fixture
def user_token(tmp_path: Path) -> MakeToken:
    """``user_token(label, pin, store=conf)``: ``make_token`` into ``conf``, or, without one, into
    a store of the test's own under its temporary directory; returns the store's config."""
    from hsmkm import keys

    def make(label: str, pin: str, store: Path | None = None) -> Path:
        conf = store if store is not None else keys.token_provisioner().make_store(tmp_path / "user-tokens")
        return make_token(label, pin, conf)

    return make


def all_bytes_under(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in root.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


def pkcs11_tool_objects(listing: str) -> list[str]:
    """`pkcs11-tool --list-objects` output split into one block per object."""
    out: list[str] = []
    for line in listing.splitlines():
        if line and not line.startswith(" "):
            out.append(line + "\n")
        elif out:
            out[-1] += line + "\n"
    return out


@pytest.fixture
def km_server(tmp_path: Path) -> Iterator[RunningServer]:
    """``hsmkm serve`` (one worker) on a fresh embedded-default KM with alice@example.com
    added: a ``server_harness.RunningServer``, her code at ``km_server.codes[email]``."""
    from server_harness import init_km, running_server

    home = tmp_path / "home"
    codes = init_km(home)
    with running_server(home) as server:
        server.codes.update(codes)
        yield server


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real OpenLDAP slapd for the session (core, cosine, inetorgperson; mdb; a free
    loopback port), stopped at the end; each test takes a subtree of its own (``ldap_base``)."""
    from hsmkm.bench.slapd import Slapd

    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ldap_base(slapd: Any, request: pytest.FixtureRequest) -> str:
    """A fresh ``ou=`` subtree of the session's slapd for this test."""
    import hashlib

    name = "t" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return str(slapd.make_base(name))
