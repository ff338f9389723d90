"""The issuance core: one function issues a certificate, signed on the token, recorded once."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hsmkm import errors
from hsmkm.keys.base import PublicKey
from hsmkm.km.manager import KeyManager
from hsmkm.x509 import profiles
from hsmkm.x509.profiles import CertKind

_SERIAL_TRIES = 8


def fresh_serial(conn: sqlite3.Connection) -> int:
    """A random 159-bit serial not yet in the database (call inside the write transaction)."""
    for _ in range(_SERIAL_TRIES):
        serial = profiles.random_serial()
        if conn.execute("SELECT 1 FROM certificates WHERE serial = ?", (serial_hex(serial),)).fetchone() is None:
            return serial
    raise errors.HsmkmError("could not draw a unique serial number")


def serial_hex(serial: int) -> str:
    """The database's key for a serial: fixed-width lower-case hex, so it also sorts."""
    return f"{serial:040x}"


def record_certificate(
    conn: sqlite3.Connection, cert: x509.Certificate, kind: CertKind | str, user_id: int | None, now: datetime
) -> None:
    conn.execute(
        "INSERT INTO certificates(serial, user_id, kind, der, not_before, not_after, issued_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            serial_hex(cert.serial_number),
            user_id,
            kind.value if isinstance(kind, CertKind) else kind,
            cert.public_bytes(Encoding.DER),
            cert.not_valid_before_utc.isoformat(),
            cert.not_valid_after_utc.isoformat(),
            now.isoformat(),
        ),
    )


def issue_user_certificate(
    km: KeyManager,
    conn: sqlite3.Connection,
    public_key: PublicKey,
    kind: CertKind,
    email: str,
    name: str | None,
    user_id: int | None,
    days: int | None = None,
) -> x509.Certificate:
    """Issue one user certificate on the token and record it, inside the caller's transaction."""
    now = km.clock()
    serial = fresh_serial(conn)
    cert = profiles.build_user_certificate(
        kind=kind,
        email=email,
        name=name,
        public_key=public_key,
        issuer_cert=km.ca_cert,
        ca_key=km.ca_key,
        serial=serial,
        not_before=now,
        not_after=now + timedelta(days=days or km.config.cert_days),
        urls=profiles.PublicationUrls(km.config.base_url),
    )
    record_certificate(conn, cert, kind, user_id, now)
    return cert
