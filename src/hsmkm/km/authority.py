"""The issuance core: a certificate is signed on the token, then recorded once by serial."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.keys.base import PublicKey
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.store.errors import Conflict
from hsmkm.store.repos.certs import NewCert
from hsmkm.store.tx import Tx
from hsmkm.x509 import profiles

_SERIAL_TRIES = 8


class SerialTaken(Exception):
    """A drawn serial is already in the database (about 2**-150 per draw): issue again."""


def serial_hex(serial: int) -> str:
    """The database's key for a serial: fixed-width lower-case hex, so it also sorts."""
    return f"{serial:040x}"


def new_cert(cert: x509.Certificate, kind: CertKind | str, user_id: int | None, now: datetime) -> NewCert:
    """The row that records ``cert`` (``kind`` a user certificate's, or CA_KIND)."""
    return NewCert(
        serial_hex(cert.serial_number),
        user_id,
        kind.value if isinstance(kind, CertKind) else kind,
        cert.public_bytes(Encoding.DER),
        cert.not_valid_before_utc.isoformat(),
        cert.not_valid_after_utc.isoformat(),
        now.isoformat(),
    )


def record_certificate(
    tx: Tx, cert: x509.Certificate, kind: CertKind | str, user_id: int | None, now: datetime
) -> None:
    """Record an issued certificate (inside the caller's transaction); its serial must be new."""
    try:
        tx.certs.add(new_cert(cert, kind, user_id, now))
    except Conflict:
        raise SerialTaken(serial_hex(cert.serial_number)) from None


def record_certificates(tx: Tx, rows: Sequence[NewCert]) -> None:
    """Record a batch in one statement; SerialTaken if any serial is already there (the caller's
    transaction must then roll back: rows before the clash may be in)."""
    try:
        tx.certs.add_many(rows)
    except Conflict:
        raise SerialTaken("") from None


def sign_user_certificate(
    km: KeyManager,
    public_key: PublicKey,
    kind: CertKind,
    email: str,
    name: str | None,
    days: int | None = None,
    capabilities: Sequence[str] | None = None,
) -> x509.Certificate:
    """Build and sign one user certificate on the token, with a fresh random serial.

    No database lock is held while the token signs, so worker processes sign in parallel;
    the caller records the certificate with ``record_certificate`` in its transaction.
    """
    now = km.clock()
    return profiles.build_user_certificate(
        kind=kind,
        email=email,
        name=name,
        public_key=public_key,
        issuer_cert=km.ca_cert,
        ca_key=km.ca_key,
        serial=profiles.random_serial(),
        not_before=now,
        not_after=now + timedelta(days=days or km.config.cert_days),
        urls=profiles.PublicationUrls(km.config.base_url),
        capabilities=capabilities,
    )


@dataclass(frozen=True)
class IssueRequest:
    """One certificate to issue: a public key and the user it names."""

    public_key: PublicKey
    kind: CertKind
    email: str
    name: str | None = None
    user_id: int | None = None


def issue_certificates(km: KeyManager, requests: Sequence[IssueRequest]) -> list[x509.Certificate]:
    """Issue a batch: each certificate signed on the token (no lock held), then all recorded
    in one transaction with one audit entry naming every serial."""
    certs = [sign_user_certificate(km, r.public_key, r.kind, r.email, r.name) for r in requests]
    for _ in range(_SERIAL_TRIES):
        try:
            with km.change(AuditAction.ISSUE, count=len(certs)) as ch:
                now = km.clock()
                record_certificates(
                    ch.tx, [new_cert(c, r.kind, r.user_id, now) for r, c in zip(requests, certs, strict=True)]
                )
                ch.details["certificates"] = [
                    {"serial": serial_hex(c.serial_number), "email": r.email, "kind": r.kind.value}
                    for r, c in zip(requests, certs, strict=True)
                ]
            return certs
        except SerialTaken:
            # Rolled back: the serials in the database now are the ones drawn before.
            serials = [serial_hex(c.serial_number) for c in certs]
            with km.db.read() as tx:
                taken = tx.certs.serials_taken(serials)
            redo = [i for i, s in enumerate(serials) if s in taken or s in serials[:i]]
            for i in redo:
                r = requests[i]
                certs[i] = sign_user_certificate(km, r.public_key, r.kind, r.email, r.name)
    raise errors.RandomSourceFailed("no unique serial after several draws")
