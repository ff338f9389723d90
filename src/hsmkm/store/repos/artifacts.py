"""Published artifacts kept in the database: the CA certificate and the current full and
delta CRL, byte for byte, so that every node serves the same bytes (with one ETag)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from hsmkm.store.schema import published_artifacts as artifacts


class ArtifactKind(str, Enum):
    CA_CERTIFICATE = "ca"
    FULL_CRL = "crl-full"
    DELTA_CRL = "crl-delta"


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    der: bytes
    sha256: str  # hex of SHA-256 over ``der``
    modified_at: str  # ISO time: a CRL's thisUpdate, the CA certificate's import
    number: int | None = None  # a CRL's number
    next_update: str | None = None  # a CRL's nextUpdate

    @property
    def etag(self) -> str:
        """A strong entity tag (RFC 9110 §8.8.3): the same bytes, the same tag, on every node."""
        return f'"{self.sha256}"'


_COLUMNS = (
    artifacts.c.kind,
    artifacts.c.der,
    artifacts.c.sha256,
    artifacts.c.modified_at,
    artifacts.c.number,
    artifacts.c.next_update,
)
_CURRENT = select(*_COLUMNS).where(artifacts.c.kind == bindparam("kind"))


class ArtifactRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def put(
        self,
        kind: ArtifactKind,
        der: bytes,
        modified_at: str,
        number: int | None = None,
        next_update: str | None = None,
    ) -> bool:
        """Make ``der`` the current artifact of its kind, unless one with a number at least
        ``number`` is there (an older CRL never replaces a newer one); False if so."""
        values = {
            "kind": kind.value,
            "der": der,
            "sha256": hashlib.sha256(der).hexdigest(),
            "modified_at": modified_at,
            "number": number,
            "next_update": next_update,
        }
        make = postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert
        stmt = make(artifacts).values(**values)
        newer = artifacts.c.number.is_(None) | (stmt.excluded.number > artifacts.c.number)
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind"],
            set_={c: stmt.excluded[c] for c in values if c != "kind"},
            where=newer,
        )
        return self._conn.execute(stmt).rowcount == 1

    def current(self, kind: ArtifactKind) -> Artifact | None:
        """The artifact of this kind as it is served now (None before the first)."""
        r = self._conn.execute(_CURRENT, {"kind": kind.value}).first()
        if r is None:
            return None
        return Artifact(
            ArtifactKind(r[0]),
            bytes(r[1]),
            str(r[2]),
            str(r[3]),
            None if r[4] is None else int(r[4]),
            None if r[5] is None else str(r[5]),
        )

    def stamp(self, kind: ArtifactKind) -> ArtifactStamp | None:
        """The current artifact's validators without its bytes (a large CRL's are megabytes)."""
        r = self._conn.execute(_STAMP, {"kind": kind.value}).first()
        if r is None:
            return None
        return ArtifactStamp(
            ArtifactKind(r[0]),
            str(r[1]),
            str(r[2]),
            None if r[3] is None else int(r[3]),
            None if r[4] is None else str(r[4]),
        )


@dataclass(frozen=True)
class ArtifactStamp:
    """What tells one artifact from another: its kind, digest, times and number."""

    kind: ArtifactKind
    sha256: str
    modified_at: str
    number: int | None
    next_update: str | None


_STAMP = select(
    artifacts.c.kind, artifacts.c.sha256, artifacts.c.modified_at, artifacts.c.number, artifacts.c.next_update
).where(artifacts.c.kind == bindparam("kind"))
