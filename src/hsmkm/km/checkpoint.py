"""Signed checkpoints of the audit head, for officers or any outside witness to keep.

A checkpoint is a CMS SignedData (RFC 5652, DER) made on the KM token with the CA key, with
the CA certificate inside, over a small JSON statement: the entry's seq and hash, the last
CRL number, the time and the KM's identity. Anyone verifies it with openssl alone:

    openssl cms -verify -inform DER -in checkpoint.p7m -CAfile ca.pem -purpose any

and `hsmkm audit verify --checkpoint FILE` checks that the log still holds that entry with
that hash. The hash chain makes a checkpoint bind every entry up to it: whoever rewrites an
entry at or below it — even the holder of the KM PIN, who can re-MAC the log and rewrite
the token's anchor — changes the hash the checkpoint names.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.cms import signed
from hsmkm.cms.validation import ValidationContext
from hsmkm.keys.base import KeyEntry, KeyRole
from hsmkm.km.audit import AuditAction, FindingSource, Witness, crl_number_of
from hsmkm.km.manager import KeyManager

STATEMENT_TYPE = "hsmkm-audit-checkpoint"
STATEMENT_VERSION = 1
_MAX_SIZE = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    digest: bytes
    crl_number: int
    at: str
    ca_subject: str
    ca_sha256: str

    def witness(self) -> Witness:
        return Witness(FindingSource.CHECKPOINT, self.seq, self.digest, self.crl_number, f"the checkpoint of {self.at}")


def _ca_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_checkpoint(km: KeyManager) -> tuple[Checkpoint, bytes]:
    """Record the export in the log, then sign a checkpoint of the head that includes it.

    Refused (AuditChainBroken) if the log fails verification: a checkpoint must never vouch
    for a cut or rolled-back log."""
    anchor = km.anchor.read()
    report = km.audit().verify([anchor.witness()] if anchor is not None else [])
    if not report.ok:
        raise errors.AuditChainBroken(
            f"not signing a checkpoint: audit chain broken at entry {report.first_bad}: {report.problem}"
        )
    with km.change(AuditAction.AUDIT_CHECKPOINT) as ch:
        ch.details.update(ca_subject=km.ca_cert.subject.rfc4514_string())
    # The head now ends with the entry just committed (or a later one from another process).
    with km.db.write() as tx:
        head = km.audit(tx).head()
        crl_number = crl_number_of(tx)
    if head is None:
        raise errors.AuditChainBroken("the audit log is empty")
    now = km.clock()
    cp = Checkpoint(
        head.seq,
        head.digest,
        crl_number,
        now.isoformat(timespec="seconds"),
        km.ca_cert.subject.rfc4514_string(),
        _ca_sha256(km.ca_cert),
    )
    statement = {
        "type": STATEMENT_TYPE,
        "version": STATEMENT_VERSION,
        "seq": cp.seq,
        "hash": cp.digest.hex(),
        "crl_number": cp.crl_number,
        "at": cp.at,
        "ca_subject": cp.ca_subject,
        "ca_certificate_sha256": cp.ca_sha256,
        "km_token_serial": km.session.serial,
    }
    content = json.dumps(statement, sort_keys=True, indent=1).encode() + b"\n"
    der = signed.sign(content, KeyEntry(km.ca_key, km.ca_cert, KeyRole.CA), [], detached=False, signing_time=now)
    return cp, der


def _der_of(data: bytes) -> bytes:
    """DER as is, or the body of a PEM block (-----BEGIN CMS----- or PKCS7)."""
    lines = data.strip().splitlines()
    if not lines or not lines[0].startswith(b"-----BEGIN"):
        return data
    if not lines[-1].startswith(b"-----END"):
        raise errors.MalformedInput("the checkpoint's PEM has no END line")
    try:
        return base64.b64decode(b"".join(ln.strip() for ln in lines[1:-1]), validate=True)
    except ValueError:
        raise errors.MalformedInput("the checkpoint's PEM does not parse") from None


def read_checkpoint(data: bytes, ca_cert: x509.Certificate, now: datetime) -> Checkpoint:
    """Verify a checkpoint's signature by this KM's CA and return what it states.

    Malformed: MalformedInput (exit 2); not signed by this KM's CA: a NegativeAnswer."""
    if len(data) > _MAX_SIZE:
        raise errors.MalformedInput("a checkpoint is at most 1 MiB")
    result = signed.verify(_der_of(data), None, ValidationContext(trust_anchors=[ca_cert], now=now))
    if result.signer != ca_cert:
        raise errors.ValidationFailed("the checkpoint is not signed by this KM's CA")
    try:
        st: Any = json.loads(result.content)
        if not isinstance(st, dict) or st.get("type") != STATEMENT_TYPE or st.get("version") != STATEMENT_VERSION:
            raise ValueError("not a checkpoint")
        seq, crl, digest = st["seq"], st["crl_number"], bytes.fromhex(st["hash"])
        if not (isinstance(seq, int) and isinstance(crl, int) and seq >= 1 and crl >= 0 and len(digest) == 32):
            raise ValueError("bad fields")
        cp = Checkpoint(seq, digest, crl, str(st["at"]), str(st["ca_subject"]), str(st["ca_certificate_sha256"]))
    except (ValueError, KeyError, TypeError):
        raise errors.MalformedInput("the signed content is not an hsmkm audit checkpoint") from None
    if cp.ca_sha256 != _ca_sha256(ca_cert):
        raise errors.ValidationFailed("the checkpoint names another CA certificate than this KM's")
    return cp
