"""CRLs (RFC 5280 §5) encoded directly in DER, in time linear in their entries (the parser is
``hsmkm.x509.crlparse``).

cryptography's CertificateRevocationListBuilder copies its list on every added entry, so
a large CRL is quadratic there (300,000 entries took 180 s). Here each entry is a few
joined byte strings and the TBS is signed once by whatever key object is given (a token key
signs on the token).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from cryptography import x509

from hsmkm import errors
from hsmkm.der import der_int, der_length, der_oid, der_time, tlv
from hsmkm.der import seq as _seq
from hsmkm.keys.algorithms import signature_scheme
from hsmkm.keys.base import PrivateKey


class RevocationReason(str, Enum):
    """RFC 5280 CRLReason, by its ASN.1 name."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    REMOVE_FROM_CRL = "removeFromCRL"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"

    @property
    def code(self) -> int:
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> RevocationReason:
        try:
            return _BY_CODE[code]
        except KeyError:
            raise errors.MalformedInput(f"unknown CRL reason code {code}") from None


_CODES = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
    RevocationReason.CERTIFICATE_HOLD: 6,
    RevocationReason.REMOVE_FROM_CRL: 8,
    RevocationReason.PRIVILEGE_WITHDRAWN: 9,
    RevocationReason.AA_COMPROMISE: 10,
}
_BY_CODE = {code: reason for reason, code in _CODES.items()}


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: RevocationReason = RevocationReason.UNSPECIFIED


def _ext(oid: str, value: bytes, critical: bool = False) -> bytes:
    return _seq(der_oid(oid), b"\x01\x01\xff" if critical else b"", tlv(0x04, value))


OID_CRL_NUMBER = "2.5.29.20"
OID_REASON = "2.5.29.21"
OID_DELTA = "2.5.29.27"
OID_AKI = "2.5.29.35"
OID_FRESHEST = "2.5.29.46"

# The crlEntryExtensions whose one extension is the reason, by reason.
REASON_EXTENSIONS = {
    reason: _seq(_seq(der_oid(OID_REASON), tlv(0x04, tlv(0x0A, bytes([code]))))) for reason, code in _CODES.items()
}
# An entry's crlEntryExtensions by reason (none when unspecified, RFC 5280 §5.3.1).
_ENTRY_EXTENSIONS = {r: b"" if r is RevocationReason.UNSPECIFIED else ext for r, ext in REASON_EXTENSIONS.items()}


def encode_entries(entries: Iterable[RevokedEntry]) -> Iterator[bytes]:
    """DER of each revokedCertificates element; a reason is omitted when unspecified."""
    time_cache: dict[datetime, bytes] = {}

    def rows() -> Iterator[tuple[int, bytes, RevocationReason]]:
        for e in entries:
            t = time_cache.get(e.revoked_at)
            if t is None:
                t = der_time(e.revoked_at)
                if len(time_cache) < 100_000:
                    time_cache[e.revoked_at] = t
            yield e.serial, t, e.reason

    return encode_rows(rows())


def encode_rows(rows: Iterable[tuple[int, bytes, RevocationReason]]) -> Iterator[bytes]:
    """DER of revokedCertificates elements from (serial, DER revocation time, reason) rows,
    the form a database gives most cheaply: no datetime and no dataclass per entry."""
    exts = _ENTRY_EXTENSIONS
    for serial, when, reason in rows:
        sb = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)
        body = b"\x02" + der_length(len(sb)) + sb + when + exts[reason]
        yield (b"\x30" + bytes((len(body),)) if len(body) < 0x80 else b"\x30" + der_length(len(body))) + body


def build_crl(
    issuer: x509.Certificate,
    key: PrivateKey,
    entries: Iterable[RevokedEntry],
    number: int,
    this_update: datetime,
    next_update: datetime,
    delta_of: int | None = None,
    freshest_url: str | None = None,
) -> bytes:
    """A signed v2 CRL (full, or delta when ``delta_of`` names the base CRL number)."""
    return sign_crl(
        issuer, key, b"".join(encode_entries(entries)), number, this_update, next_update, delta_of, freshest_url
    )


def sign_crl(
    issuer: x509.Certificate,
    key: PrivateKey,
    revoked: bytes,
    number: int,
    this_update: datetime,
    next_update: datetime,
    delta_of: int | None = None,
    freshest_url: str | None = None,
) -> bytes:
    """A signed v2 CRL around already encoded revokedCertificates elements."""
    try:
        scheme = signature_scheme(key)
    except errors.UnsupportedAlgorithm:
        raise errors.UnsupportedAlgorithm("CRLs are signed with RSA or ECDSA keys") from None
    sig_alg = scheme.algorithm_identifier
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    exts = [
        _ext(OID_AKI, _seq(tlv(0x80, ski))),
        _ext(OID_CRL_NUMBER, der_int(number)),
    ]
    if delta_of is not None:
        exts.append(_ext(OID_DELTA, der_int(delta_of), critical=True))
    elif freshest_url is not None:
        # FreshestCRL: SEQUENCE OF DistributionPoint { [0] fullName [0] { [6] URI } }
        uri = tlv(0x86, freshest_url.encode())
        exts.append(_ext(OID_FRESHEST, _seq(_seq(tlv(0xA0, tlv(0xA0, uri))))))
    tbs = _seq(
        der_int(1),
        sig_alg,
        issuer.subject.public_bytes(),
        der_time(this_update),
        der_time(next_update),
        tlv(0x30, revoked) if revoked else b"",
        tlv(0xA0, _seq(*exts)),
    )
    signature = scheme.sign(key, tbs)
    return _seq(tbs, sig_alg, tlv(0x03, b"\x00" + signature))
