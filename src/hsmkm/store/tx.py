"""A transaction on the KM database, with one repository per aggregate as attributes."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from hsmkm.store.lean import driver_sql

if TYPE_CHECKING:
    from hsmkm.store.repos.archive import ArchiveRepo
    from hsmkm.store.repos.artifacts import ArtifactRepo
    from hsmkm.store.repos.audit import AuditRepo
    from hsmkm.store.repos.certs import CertRepo
    from hsmkm.store.repos.codes import CodeRepo
    from hsmkm.store.repos.counters import CounterRepo
    from hsmkm.store.repos.crls import CrlRepo
    from hsmkm.store.repos.enroll_responses import EnrollResponseRepo
    from hsmkm.store.repos.epochs import EpochRepo
    from hsmkm.store.repos.meta import MetaRepo
    from hsmkm.store.repos.officers import OfficerRepo
    from hsmkm.store.repos.outbox import OutboxRepo
    from hsmkm.store.repos.recovery import RecoveryRepo
    from hsmkm.store.repos.settings import SettingsRepo
    from hsmkm.store.repos.shares import ShareRepo
    from hsmkm.store.repos.users import UserRepo


# The driver connection the temporary escape hatches hand out.
RawConnection = sqlite3.Connection


class Tx:
    """What a state change (``writable``) or a reader works through; never a connection."""

    def __init__(self, conn: Connection, writable: bool) -> None:
        self._conn = conn
        self.writable = writable

    @cached_property
    def meta(self) -> MetaRepo:
        from hsmkm.store.repos.meta import MetaRepo

        return MetaRepo(self._conn)

    @cached_property
    def counters(self) -> CounterRepo:
        from hsmkm.store.repos.counters import CounterRepo

        return CounterRepo(self._conn)

    @cached_property
    def users(self) -> UserRepo:
        from hsmkm.store.repos.users import UserRepo

        return UserRepo(self._conn)

    @cached_property
    def codes(self) -> CodeRepo:
        from hsmkm.store.repos.codes import CodeRepo

        return CodeRepo(self._conn)

    @cached_property
    def settings(self) -> SettingsRepo:
        from hsmkm.store.repos.settings import SettingsRepo

        return SettingsRepo(self._conn)

    @cached_property
    def audit(self) -> AuditRepo:
        from hsmkm.store.repos.audit import AuditRepo

        return AuditRepo(self._conn)

    @cached_property
    def certs(self) -> CertRepo:
        from hsmkm.store.repos.certs import CertRepo

        return CertRepo(self._conn)

    @cached_property
    def archive(self) -> ArchiveRepo:
        from hsmkm.store.repos.archive import ArchiveRepo

        return ArchiveRepo(self._conn)

    @cached_property
    def enroll_responses(self) -> EnrollResponseRepo:
        from hsmkm.store.repos.enroll_responses import EnrollResponseRepo

        return EnrollResponseRepo(self._conn)

    @cached_property
    def crls(self) -> CrlRepo:
        from hsmkm.store.repos.crls import CrlRepo

        return CrlRepo(self._conn)

    @cached_property
    def artifacts(self) -> ArtifactRepo:
        from hsmkm.store.repos.artifacts import ArtifactRepo

        return ArtifactRepo(self._conn)

    @cached_property
    def outbox(self) -> OutboxRepo:
        from hsmkm.store.repos.outbox import OutboxRepo

        return OutboxRepo(self._conn)

    @cached_property
    def officers(self) -> OfficerRepo:
        from hsmkm.store.repos.officers import OfficerRepo

        return OfficerRepo(self._conn)

    @cached_property
    def epochs(self) -> EpochRepo:
        from hsmkm.store.repos.epochs import EpochRepo

        return EpochRepo(self._conn)

    @cached_property
    def shares(self) -> ShareRepo:
        from hsmkm.store.repos.shares import ShareRepo

        return ShareRepo(self._conn)

    @cached_property
    def recovery(self) -> RecoveryRepo:
        from hsmkm.store.repos.recovery import RecoveryRepo

        return RecoveryRepo(self._conn)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads in the body see one state: this transaction's, or a deferred one begun here."""
        raw = self.connection
        if raw.in_transaction:
            yield
            return
        driver_sql(self._conn, "BEGIN")
        try:
            yield
        finally:
            driver_sql(self._conn, "COMMIT")

    # --- below the repositories: for snapshot() and tests acting as a database writer -----------

    @property
    def connection(self) -> sqlite3.Connection:
        """The driver connection of this transaction (km/ never uses it)."""
        raw = self._conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw
