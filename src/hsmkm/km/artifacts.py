"""The published artifacts kept in the database (CA certificate, current full and delta CRL):
which CRL kind is which artifact, and handing them to a publisher again from the database."""

from __future__ import annotations

from hsmkm.km.publisher import CrlKind, Publisher
from hsmkm.store.database import Database
from hsmkm.store.repos.artifacts import Artifact, ArtifactKind, ArtifactStamp

ARTIFACT_OF = {CrlKind.FULL: ArtifactKind.FULL_CRL, CrlKind.DELTA: ArtifactKind.DELTA_CRL}


def current(db: Database, kind: ArtifactKind) -> Artifact | None:
    """The artifact as every node serves it now (its bytes, ETag, number, times)."""
    with db.read() as tx:
        return tx.artifacts.current(kind)


def republish(db: Database, publisher: Publisher) -> None:
    """Give the publisher the database's artifacts again (a destination restored or lost)."""
    ca = current(db, ArtifactKind.CA_CERTIFICATE)
    if ca is not None:
        publisher.ca_certificate(ca.der)
    for kind, artifact_kind in ARTIFACT_OF.items():
        crl = current(db, artifact_kind)
        if crl is not None and crl.number is not None:
            publisher.crl(kind, crl.number, crl.der)


def stamp(db: Database, kind: ArtifactKind) -> ArtifactStamp | None:
    """The current artifact's digest and times, without reading its bytes."""
    with db.read() as tx:
        return tx.artifacts.stamp(kind)
