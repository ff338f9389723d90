"""What an officer is shown before approving a request: the request rebuilt from the records,
the CA certificate's fingerprint and, when asked to trust an unattested set, the officers' keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding

from hsmkm import errors
from hsmkm.km import custody, epochs, recovery, request_content
from hsmkm.km.manager import KeyManager


@dataclass(frozen=True)
class ApprovalView:
    """An open request as the officer approves it: their registered token, the content they
    sign, and the text shown to them."""

    officer_uri: str
    content: request_content.Content
    shown: str


def prepare_approval(km: KeyManager, request_id: int, officer: str, trust_officer_set: bool) -> ApprovalView:
    """Refuse a non-officer or a request not open; else what the officer is shown and signs."""
    with km.db.read() as tx:
        registered = {o.name: o for o in custody.active_officers(tx)}
    if officer not in registered:
        raise errors.PolicyViolation(f"{officer} is not a recovery officer")
    status = recovery.get(km, request_id).status
    if status is not recovery.RequestStatus.OPEN:
        raise errors.PolicyViolation(f"request {request_id} is {status.value}")
    content = recovery.content_for_officer(km, request_id)
    shown = request_content.describe(content)
    shown += f"\n  KM CA certificate SHA-256 {hashlib.sha256(km.ca_cert.public_bytes(Encoding.DER)).hexdigest()}"
    if trust_officer_set:
        shown += "\n" + _fingerprints(km, content)
    return ApprovalView(registered[officer].uri, content, shown)


def _fingerprints(km: KeyManager, content: request_content.Content) -> str:
    with km.db.read() as tx:
        ep = epochs.get(tx, int(content.data["epoch"]))
    return "  officer set {} (quorum {}): {}".format(
        ep.number,
        ep.quorum,
        "; ".join(
            f"{o.name} SHA-256 {hashlib.sha256(custody.public_der(o.public_key)).hexdigest()[:32]}" for o in ep.officers
        ),
    )
