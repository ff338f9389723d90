"""The publication outbox: users' directory entries and published artifacts (CA certificate,
CRLs) to be published after a commit, and the last failure to publish them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, select

from hsmkm.store.lean import Prepared
from hsmkm.store.repos.artifacts import ArtifactKind
from hsmkm.store.schema import artifact_outbox as artifacts
from hsmkm.store.schema import directory_outbox as outbox
from hsmkm.store.schema import outbox_status as status
from hsmkm.store.upsert import upsert

_QUEUED = Prepared(select(outbox.c.email, outbox.c.queued_at).order_by(outbox.c.email))
_DONE = Prepared(outbox.delete().where(outbox.c.email == bindparam("e"), outbox.c.queued_at == bindparam("at")))
_ARTIFACTS = Prepared(select(artifacts.c.artifact, artifacts.c.queued_at).order_by(artifacts.c.artifact))
_FAILURES = Prepared(select(status.c.failures).where(status.c.id == 1))
_ARTIFACT_DONE = Prepared(
    artifacts.delete().where(artifacts.c.artifact == bindparam("a"), artifacts.c.queued_at == bindparam("at"))
)


@dataclass(frozen=True)
class OutboxState:
    """How much is queued, and the last failure to publish it (cleared by a drain that empties it)."""

    users: int
    artifacts: int
    failures: int
    last_error: str | None
    last_error_at: str | None

    @property
    def depth(self) -> int:
        return self.users + self.artifacts


class OutboxRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def queue(self, email: str, at: str) -> None:
        """Queue the user (again: the later time wins, so a drain that read before it keeps it)."""
        upsert(self._conn, outbox, ("email",), {"email": email, "queued_at": at})

    def queued(self) -> list[tuple[str, str]]:
        """(address, queued at) of every queued user, by address."""
        return [(str(r[0]), str(r[1])) for r in _QUEUED.all(self._conn)]

    def done(self, email: str, at: str) -> None:
        """Drop the user's row if it was not queued again since ``at``."""
        _DONE.rowcount(self._conn, {"e": email, "at": at})

    def queue_artifact(self, kind: ArtifactKind, at: str) -> None:
        """Queue the artifact's publication (its current bytes, read when it is published)."""
        upsert(self._conn, artifacts, ("artifact",), {"artifact": kind.value, "queued_at": at})

    def queued_artifacts(self) -> list[tuple[ArtifactKind, str]]:
        return [(ArtifactKind(str(r[0])), str(r[1])) for r in _ARTIFACTS.all(self._conn)]

    def artifact_done(self, kind: ArtifactKind, at: str) -> None:
        _ARTIFACT_DONE.rowcount(self._conn, {"a": kind.value, "at": at})

    def clear(self) -> None:
        self._conn.execute(outbox.delete())
        self._conn.execute(artifacts.delete())

    def failures(self) -> int:
        """Drains that failed in a row since the last one that published everything."""
        row = _FAILURES.first(self._conn)
        return int(row[0]) if row else 0

    def failed(self, error: str, at: str) -> None:
        """Record a drain that could not publish everything."""
        failures = self.failures() + 1
        upsert(
            self._conn,
            status,
            ("id",),
            {"id": 1, "failures": failures, "last_error": error, "last_error_at": at},
        )

    def succeeded(self) -> None:
        """A drain published everything: the failure count starts again (the last error stays)."""
        self._conn.execute(status.update().where(status.c.id == 1).values(failures=0))

    def state(self) -> OutboxState:
        users = self._conn.execute(select(func.count()).select_from(outbox)).scalar_one()
        arts = self._conn.execute(select(func.count()).select_from(artifacts)).scalar_one()
        row = self._conn.execute(
            select(status.c.failures, status.c.last_error, status.c.last_error_at).where(status.c.id == 1)
        ).first()
        if row is None:
            return OutboxState(int(users), int(arts), 0, None, None)
        return OutboxState(int(users), int(arts), int(row[0]), row[1], row[2])
