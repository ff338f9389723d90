"""The KM database: an engine (SQLite in WAL mode by default), its schema revision, and transactions."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.pool import StaticPool

from hsmkm import errors
from hsmkm.store import errors as store_errors
from hsmkm.store.lean import driver_sql
from hsmkm.store.tx import Tx

if TYPE_CHECKING:
    from alembic.config import Config

# This code's head revision: opening a database compares with it without loading Alembic
# (tests/test_store.py checks it is the migrations' head).
HEAD = "0006_publication_outbox"
BUSY_TIMEOUT_S = 60.0
FLOCK_POLL_S = 0.0005
# The revision a database made by the release code is at, by its meta 'schema_version'.
_RELEASE_REVISIONS = {"1": "0001_v1", "2": "0001_v1"}  # 0002 also completes a release's version 2


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "hsmkm.store:migrations")
    return cfg


def head_revision() -> str:
    """The revision this code's schema is at."""
    return HEAD


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {r.revision for r in ScriptDirectory.from_config(_config()).walk_revisions()}


class Revision(str, Enum):
    """Where a database stands against this code's head."""

    CURRENT = "current"
    OLDER = "older"
    NEWER = "newer"  # a revision this code does not know
    EMPTY = "empty"  # no KM tables at all


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise errors.Unreachable(f"cannot open database {path}: {exc}") from None
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def write_lock_path(path: Path) -> Path:
    """The file beside the database whose flock writers take before BEGIN IMMEDIATE."""
    return path.with_name(path.name + "-write.lock")


def _open_write_lock(path: Path) -> int | None:
    # A writer waiting in flock wakes the moment the other commits; waiting in SQLite's busy
    # handler it sleeps in growing steps. SQLite's own lock and busy timeout stay the rule (a
    # writer without this file, e.g. an older hsmkm, is still excluded); this only orders the
    # waiters. No file (a read-only directory): SQLite's busy handler alone, as before.
    try:
        return os.open(write_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None


def _flock_within(fd: int, timeout_s: float) -> bool:
    """Take ``fd``'s exclusive flock, polling finely (a blocking flock could not time out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(FLOCK_POLL_S)


def _translate_errors(context: Any) -> None:
    translated = store_errors.translate(context.original_exception)
    if translated is not None:
        raise translated from None


class Database:
    """One connection to the KM database; writers take ``write()``, readers ``read()``."""

    def __init__(self, path: Path, engine: Engine) -> None:
        self.path = path
        self.engine = engine
        try:
            self._conn: Connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except store_errors.DATABASE_ERRORS as exc:
            raise errors.Unreachable(f"cannot open database {path}: {exc}") from None
        self._tx: Tx | None = None
        self._lock = threading.RLock()
        self._write_lock = _open_write_lock(path)

    @classmethod
    def _connect(cls, path: Path) -> Database:
        engine = create_engine("sqlite://", creator=lambda: _sqlite_connect(path), poolclass=StaticPool)
        event.listen(engine, "handle_error", _translate_errors)
        return cls(path, engine)

    @classmethod
    def create(cls, path: Path) -> Database:
        """A new database at the head revision."""
        if path.exists():
            raise errors.AlreadyExists(f"database {path} already exists")
        db = cls._connect(path)
        with db._migration() as conn:
            from alembic import command

            cfg = _config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return db

    @classmethod
    def open(cls, path: Path) -> Database:
        """The database at ``path``, which must be at this code's head revision."""
        db = cls._connect_existing(path)
        state, rev = db.revision()
        if state is Revision.CURRENT:
            return db
        db.close()
        cls._refuse(path, state, rev)
        raise AssertionError("unreachable")

    @classmethod
    def _connect_existing(cls, path: Path) -> Database:
        if not path.exists():
            raise errors.NotFound(f"no KM database at {path} (run 'hsmkm init')")
        return cls._connect(path)

    @staticmethod
    def _refuse(path: Path, state: Revision, rev: str | None) -> None:
        if state is Revision.OLDER:
            raise store_errors.SchemaOutdated(
                f"the KM database {path} is at schema revision {rev}, older than {head_revision()}: "
                "run 'hsmkm db upgrade'"
            )
        if state is Revision.NEWER:
            raise store_errors.SchemaTooNew(
                f"the KM database {path} is at schema revision {rev}, which this hsmkm does not know "
                f"(its newest is {head_revision()}): a newer hsmkm made it"
            )
        raise store_errors.DatabaseDamaged(f"{path}: not a KM database (no schema revision)")

    @classmethod
    def upgrade(cls, path: Path) -> tuple[str | None, str]:
        """Bring the database at ``path`` to head (a release database is stamped first).
        Returns the revisions before and after; a no-op at head."""
        db = cls._connect_existing(path)
        try:
            with db._migration() as conn:
                state, before = db._revision_of(conn)
                if state is Revision.NEWER or state is Revision.EMPTY:
                    cls._refuse(path, state, before)
                if state is Revision.OLDER:
                    from alembic import command
                    from alembic.runtime.migration import MigrationContext

                    cfg = _config()
                    cfg.attributes["connection"] = conn
                    if MigrationContext.configure(conn).get_current_revision() is None:
                        assert before is not None
                        command.stamp(cfg, before)
                    command.upgrade(cfg, "head")
            return before, head_revision()
        finally:
            db.close()

    def revision(self) -> tuple[Revision, str | None]:
        """Where this database stands, and its revision (a release's, for one made by the release)."""
        with self._guard():
            return self._revision_of(self._conn)

    @staticmethod
    def _revision_of(conn: Connection) -> tuple[Revision, str | None]:
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" in tables:
            rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if rev == HEAD:
                return Revision.CURRENT, rev
            return (Revision.OLDER if rev in _known_revisions() else Revision.NEWER), rev
        if "meta" not in tables:
            return Revision.EMPTY, None
        version = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
        if version is None:
            return Revision.EMPTY, None
        if str(version) in _RELEASE_REVISIONS:
            return Revision.OLDER, _RELEASE_REVISIONS[str(version)]
        return Revision.NEWER, f"schema_version {version}"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Driver errors escaping a body (a not-yet-converted caller's SQL) as hsmkm errors."""
        try:
            yield
        except store_errors.DATABASE_ERRORS as exc:
            translated = store_errors.translate(exc)
            if translated is None:
                raise
            if isinstance(translated, store_errors.DatabaseDamaged):
                raise store_errors.DatabaseDamaged(f"{self.path}: a damaged database ({exc})") from None
            raise translated from None

    @contextlib.contextmanager
    def _migration(self) -> Iterator[Connection]:
        # Alembic joins a transaction SQLAlchemy has seen begin, and would otherwise begin and
        # commit one of its own, committing this one under it: BEGIN through SQLAlchemy here.
        with self._guard(), self._begin_immediate(lambda sql: self._conn.exec_driver_sql(sql)):
            yield self._conn

    @contextlib.contextmanager
    def _begin_immediate(self, run: Callable[[str], object] | None = None) -> Iterator[None]:
        # SQLite: the write lock is taken at BEGIN, so a transaction never fails to upgrade a
        # read lock midway; SQLAlchemy's own transaction handling is off (AUTOCOMMIT) for this.
        # The transaction statements go to the driver (store.lean), errors translated.
        execute = run or functools.partial(driver_sql, self._conn)
        with self._flocked():
            execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                execute("ROLLBACK")
                raise
            else:
                execute("COMMIT")

    @contextlib.contextmanager
    def _flocked(self) -> Iterator[None]:
        """The write-lock file's exclusive flock for one transaction (the kernel drops it if
        the process dies)."""
        fd = self._write_lock
        if fd is None or not _flock_within(fd, BUSY_TIMEOUT_S):
            yield  # no lock file, or a holder stuck past the timeout: SQLite's busy handler decides
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT; rolled back on any exception).
        Writers are serialised; write transactions do not nest."""
        with self._lock:
            if self._tx is not None:
                raise RuntimeError("Database.write() does not nest")
            with self._guard(), self._begin_immediate():
                tx = Tx(self._conn, writable=True)
                self._tx = tx
                try:
                    yield tx
                finally:
                    self._tx = None

    def reader(self) -> Tx:
        """A Tx for reads: the write transaction's inside one, else each statement on its own."""
        return self._tx if self._tx is not None else Tx(self._conn, writable=False)

    @contextlib.contextmanager
    def read(self, snapshot: bool = False) -> Iterator[Tx]:
        """Reads: inside a write transaction, that one's; else each statement on its own, or
        with ``snapshot`` one deferred transaction (a consistent view, no write lock)."""
        with self._lock:
            if self._tx is not None:
                yield self._tx
                return
            with self._guard():
                if not snapshot:
                    yield Tx(self._conn, writable=False)
                    return
                driver_sql(self._conn, "BEGIN")
                try:
                    yield Tx(self._conn, writable=False)
                finally:
                    driver_sql(self._conn, "COMMIT")

    # --- below the repositories: for tests acting as a database writer, and for tools ------------
    # (km/ never uses these; a test checks that no module outside store/ reaches a connection)

    @property
    def conn(self) -> sqlite3.Connection:
        """The driver connection underneath, for raw SQL as a database writer would write it."""
        raw = self._conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``write()`` on the driver connection (raw SQL inside one write transaction)."""
        with self.write() as tx:
            yield tx.connection

    def get_meta(self, key: str) -> str | None:
        with self.read() as tx:
            return tx.meta.get(key)

    def close(self) -> None:
        self._conn.close()
        self.engine.dispose()
        if self._write_lock is not None:
            os.close(self._write_lock)
            self._write_lock = None
