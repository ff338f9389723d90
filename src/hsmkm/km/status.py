"""What ``hsmkm status`` reports: token, keys and their custody attributes, counts, officers."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from hsmkm.keys.token import ObjectKind
from hsmkm.km import archive, custody
from hsmkm.km.config import AUDIT_KEY_LABEL, CA_KEY_LABEL
from hsmkm.km.manager import KeyManager
from hsmkm.store.repos.crls import CrlKind


def km_status(km: KeyManager) -> dict[str, Any]:
    tx = km.db.reader()
    keys = []
    for label, cls in (
        (CA_KEY_LABEL, ObjectKind.PRIVATE_KEY),
        (tx.meta.get("archive_key_label") or km.config.archive_key_label, ObjectKind.SECRET_KEY),
        (AUDIT_KEY_LABEL, ObjectKind.SECRET_KEY),
    ):
        keys.append(asdict(km.session.attributes(label, cls)))

    crl = tx.crls.last(CrlKind.FULL)
    now = km.clock()
    crl_info: dict[str, Any] | None = None
    if crl is not None:
        this_update = datetime.fromisoformat(crl.this_update)
        crl_info = {
            "number": crl.number,
            "this_update": crl.this_update,
            "next_update": crl.next_update,
            "entries": crl.entries,
            "age_seconds": int((now - this_update).total_seconds()),
            "stale": now > datetime.fromisoformat(crl.next_update),
        }
    officers = custody.active_officers(tx)
    outbox = tx.outbox.state()
    return {
        "home": str(km.home.root),
        "schema_revision": km.db.revision()[1],
        "embedded": km.config.embedded,
        "token": {
            "module": km.config.km_token.module,
            "label": km.session.label,
            "serial": km.session.serial,
            "reachable": True,
        },
        "recovery_token": km.config.recovery_token.label if km.config.recovery_token else None,
        "keys": keys,
        "ca": {
            "subject": km.ca_cert.subject.rfc4514_string() if km.home.ca_cert.exists() else None,
            "not_after": km.ca_cert.not_valid_after_utc.isoformat() if km.home.ca_cert.exists() else None,
            "key_algorithm": km.config.ca_key_alg.value,
        },
        "counts": {
            "users": tx.users.count(),
            "certificates": tx.certs.count_issued(),
            "revoked": tx.certs.count_revoked(),
            "archived_keys": tx.archive.count(),
            "archived_keys_to_migrate": tx.archive.count(format_version=archive.FORMAT_V1),
            "audit_entries": tx.audit.count(),
        },
        "crl": crl_info,
        "outbox": {
            "depth": outbox.depth,
            "users": outbox.users,
            "artifacts": outbox.artifacts,
            "failures": outbox.failures,
            "last_error": outbox.last_error,
            "last_error_at": outbox.last_error_at,
        },
        "directories": ["files"] + ([km.config.ldap.url] if km.config.ldap is not None else []),
        "officers": [o.name for o in officers],
        "token_store": {
            "guarded": km.session.module.store is not None,
            "repairs": [r.describe() for r in km.repairs],
        },
        "quorum": custody.quorum(tx),
    }
