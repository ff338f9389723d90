"""Adding the LDAP publisher to a KM: checked against the directory before km.json names it,
then every entry queued for it and published."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hsmkm.km import directory
from hsmkm.km.config import Home, KmConfig, LdapConfig, relative_source
from hsmkm.km.publishers import SecretReader, publisher_for
from hsmkm.km.publishers.ldap import LdapPublisher
from hsmkm.store.database import Database
from hsmkm.store.repos.artifacts import ArtifactKind

__all__ = ["LdapConfig", "configure_ldap"]


def configure_ldap(home: Home, config: KmConfig, db: Database, settings: LdapConfig, secrets: SecretReader) -> int:
    """Bind and make the base entry (nothing is saved when that fails), save the settings,
    queue every user and artifact, and drain; returns how many were published."""
    resolved = config.resolve_source(settings.password_source)
    probe = LdapPublisher(settings, (lambda: secrets(resolved, "LDAP bind password")) if resolved is not None else None)
    probe.link.get()  # a refused bind is refused here, as bad input
    probe.prepare()
    probe.close()
    saved = dataclasses.replace(settings, password_source=relative_source(home.root, settings.password_source))
    config.ldap = saved
    config.save(home)
    now = datetime.now(UTC).isoformat()
    with db.write() as tx:
        for email in tx.users.emails():
            directory.queue(tx, email, now)
        for kind in ArtifactKind:
            directory.queue_artifact(tx, kind, now)
    done = directory.drain_outbox(db, publisher_for(home.root, secrets), now)
    return done.published
