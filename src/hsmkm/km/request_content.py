"""A request's content: what an officer sees, signs, and what completion recomputes.

Canonical JSON of the request id, kind, user, each record's certificate (issuer, serial,
validity), reason, creation, expiry, the request's public key, the share epoch and the
change's parameters. It is always rebuilt from the rows themselves (the request, the user,
the archive records and their certificates, each checked against the CA's signature), never
read from a stored digest, so an edit of any of them after approval shows as a mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from hsmkm import errors
from hsmkm.km.officer_side import RecordIdentity
from hsmkm.store.repos.recovery import ContentRecord, RequestKind
from hsmkm.store.tx import Tx

CONTENT_VERSION = 2

CHANGE_KIND_VALUES = (RequestKind.OFFICER_ADD.value, RequestKind.OFFICER_REMOVE.value, RequestKind.POLICY.value)


@dataclass(frozen=True)
class RecordView:
    """One record as the officer is shown it."""

    identity: RecordIdentity
    email: str
    issuer: str
    serial: str
    not_before: str
    not_after: str


@dataclass(frozen=True)
class Content:
    data: dict[str, Any]
    records: tuple[RecordView, ...]

    @property
    def canonical(self) -> bytes:
        return json.dumps(self.data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def expires(self) -> str:
        return str(self.data["expires"])


def _cert_email(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [e.lower() for e in san.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        return []


def _record_view(
    row: ContentRecord | None, record_id: int, user_id: int, email: str, ca_cert: x509.Certificate | None
) -> RecordView:
    if row is None:
        raise errors.NotFound(f"archive record {record_id} is missing")
    rec_user, serial, der, cert_user = row.user_id, row.cert_serial, row.cert_der, row.cert_user_id
    if rec_user != user_id or cert_user != user_id or der is None:
        raise errors.Tampered(f"archive record {record_id} does not belong to {email}")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise errors.Tampered(f"the certificate of archive record {record_id} does not parse") from None
    if ca_cert is not None:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature and friends
            raise errors.Tampered(
                f"the certificate of archive record {record_id} is not signed by the KM's CA ({type(exc).__name__})"
            ) from None
    if f"{cert.serial_number:040x}" != serial:
        raise errors.Tampered(f"archive record {record_id} names serial {serial}, its certificate another")
    if email not in _cert_email(cert):
        raise errors.Tampered(f"the certificate of archive record {record_id} is not {email}'s")
    return RecordView(
        RecordIdentity(record_id, user_id, serial),
        email,
        cert.issuer.rfc4514_string(),
        serial,
        cert.not_valid_before_utc.isoformat(),
        cert.not_valid_after_utc.isoformat(),
    )


def build(tx: Tx, request_id: int, ca_cert: x509.Certificate | None) -> Content:
    """The content of request ``request_id`` from the rows, certificates checked against
    ``ca_cert`` (None: parsed but not checked, for completion, which checks signatures)."""
    malformed = errors.Tampered(f"request {request_id} is malformed in the database")
    try:
        r = tx.recovery.get(request_id)
    except ValueError:
        raise malformed from None
    if r is None:
        raise errors.NotFound(f"no request {request_id}")
    try:
        record_ids = [int(i) for i in json.loads(r.records)]
        params = json.loads(r.params)
    except (ValueError, TypeError):
        raise malformed from None
    user = None
    views: list[RecordView] = []
    if r.user_id is not None:
        if r.email is None:
            raise errors.Tampered(f"request {request_id} names a user who does not exist")
        user = {"id": r.user_id, "email": r.email}
        rows = tx.recovery.content_records(record_ids)
        views = [_record_view(rows.get(rid), rid, r.user_id, r.email, ca_cert) for rid in record_ids]
    data = {
        "v": CONTENT_VERSION,
        "id": r.id,
        "kind": r.kind.value,
        "user": user,
        "records": [
            {
                "record": v.identity.record_id,
                "issuer": v.issuer,
                "serial": v.serial,
                "not_before": v.not_before,
                "not_after": v.not_after,
            }
            for v in views
        ],
        "reason": r.reason,
        "created": r.created_at,
        "expires": r.expires_at,
        "request_key": r.public_key.hex(),
        "epoch": r.share_epoch,
        "params": params,
    }
    return Content(data, tuple(views))


def describe(content: Content) -> str:
    """What the officer is about to sign, for people."""
    d = content.data
    lines = [f"request {d['id']} ({d['kind']}), share epoch {d['epoch']}"]
    if d["user"] is not None:
        lines.append(f"  user:    {d['user']['email']}")
        for v in content.records:
            lines.append(
                f"  record {v.identity.record_id}: certificate serial {v.serial}, issuer {v.issuer}, "
                f"valid {v.not_before} .. {v.not_after} (signature checked against the KM CA)"
            )
    if d["params"]:
        p = d["params"]
        if "officers" in p:
            import hashlib

            lines.append(
                f"  new officers (quorum {p.get('quorum')}): "
                + "; ".join(
                    f"{o[0]} key SHA-256 {hashlib.sha256(bytes.fromhex(o[2])).hexdigest()[:32]}" for o in p["officers"]
                )
            )
        for k in ("name", "uri"):
            if k in p:
                lines.append(f"  {k}: {p[k]}")
    if d["kind"] in CHANGE_KIND_VALUES:
        lines.append("  your token re-shares your share of every archive record to the new officer set")
    elif d["kind"] == RequestKind.MIGRATE.value:
        lines.append("  your share of the recovery token's PIN opens it one last time to move every record to shares")
    lines.append(f"  reason:  {d['reason']}")
    lines.append(f"  created: {d['created']}; expires {d['expires']}")
    return "\n".join(lines)
