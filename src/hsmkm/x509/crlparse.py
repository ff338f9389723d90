"""CRLs (RFC 5280 §5) parsed directly over their DER: what a client's cache and index need,
without an object per entry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature

from hsmkm import errors
from hsmkm.der import der_oid, read_tlv, seq, time_seconds
from hsmkm.keys.algorithms import Digest, KeyKind, SignatureScheme, key_kind
from hsmkm.keys.base import PublicKey
from hsmkm.x509.crl import (
    OID_CRL_NUMBER,
    OID_DELTA,
    OID_REASON,
    REASON_EXTENSIONS,
    RevocationReason,
    RevokedEntry,
)

# crlEntryExtensions whose one extension is the reason, up to the code: the usual entry's.
_ONLY_REASON = REASON_EXTENSIONS[RevocationReason.KEY_COMPROMISE][:-1]
_KNOWN_CODES = frozenset(reason.code for reason in RevocationReason)


def _read(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at ``pos``."""
    return read_tlv(data, pos, "CRL")


def _parse_time(tag: int, raw: bytes) -> datetime:
    try:
        return datetime.fromtimestamp(time_seconds(tag, raw), UTC)
    except errors.MalformedInput as exc:
        raise errors.MalformedInput(f"CRL: {exc}") from None


@dataclass
class ParsedCrl:
    tbs: bytes
    signature_algorithm: bytes
    signature: bytes
    issuer_der: bytes
    this_update: datetime
    next_update: datetime | None
    number: int | None
    delta_of: int | None
    revoked_start: int
    revoked_end: int
    der: bytes

    def entries(self) -> Iterator[RevokedEntry]:
        """The revoked entries, walked directly over the DER."""
        for serial, seconds, code in self.revocations():
            yield RevokedEntry(serial, datetime.fromtimestamp(seconds, UTC), RevocationReason.from_code(code))

    def revocations(self) -> Iterator[tuple[int, int, int]]:
        """(serial, revocation time in seconds since 1970, reason code) of each entry: what
        an index needs, without a datetime or an enum per entry."""
        try:
            yield from self._revocations()
        except IndexError:
            raise errors.MalformedInput("CRL: truncated entry") from None

    def _revocations(self) -> Iterator[tuple[int, int, int]]:
        data = self.der
        pos, stop = self.revoked_start, self.revoked_end
        days: dict[bytes, int] = {}
        only_reason = _ONLY_REASON
        reason_at = len(only_reason)
        while pos < stop:
            # Entries are short, so their lengths take the one-byte form; others go the long way.
            n = data[pos + 1]
            if data[pos] != 0x30:
                raise errors.MalformedInput("CRL: bad entry")
            if n < 0x80:
                start, end = pos + 2, pos + 2 + n
            else:
                _, start, end = _read(data, pos)
            n = data[start + 1]
            if end > stop or data[start] != 0x02 or not 0 < n < 0x80 or start + 2 + n >= end:
                raise errors.MalformedInput("CRL: bad serial number")
            s = start + 2
            e = s + n
            serial = int.from_bytes(data[s:e], "big", signed=True)
            n = data[e + 1]
            e2 = e + 2 + n
            if n >= 0x80 or e2 > end:
                raise errors.MalformedInput("CRL: bad revocation date")
            try:
                seconds = time_seconds(data[e], data[e + 2 : e2], days)
            except errors.MalformedInput as exc:
                raise errors.MalformedInput(f"CRL: {exc}") from None
            if e2 == end:
                code = 0
            elif end - e2 == reason_at + 1 and data[e2 : end - 1] == only_reason:
                code = data[end - 1]
            else:
                code = _entry_reason(data, e2, end)
            if code not in _KNOWN_CODES:
                raise errors.MalformedInput(f"CRL: unknown reason code {code}")
            yield serial, seconds, code
            pos = end


def _entry_reason(data: bytes, pos: int, end: int) -> int:
    """The reason code in crlEntryExtensions, or 0 (unspecified) without one."""
    for oid, value in _extensions(data, pos, end):
        if oid == der_oid(OID_REASON):
            if len(value) != 3 or value[:2] != b"\x0a\x01":
                raise errors.MalformedInput("CRL: bad reason code")
            return value[2]
    return 0


def _extensions(data: bytes, pos: int, end: int) -> Iterator[tuple[bytes, bytes]]:
    """(DER OID, extnValue contents) of the Extensions SEQUENCE at ``pos``, which ends at ``end``."""
    tag, s, e = _read(data, pos)
    if tag != 0x30 or e != end:
        raise errors.MalformedInput("CRL: bad extensions")
    pos = s
    while pos < e:
        tag, es, ee = _read(data, pos)
        _, _, oe = _read(data, es)
        if tag != 0x30 or ee > e:
            raise errors.MalformedInput("CRL: bad extension")
        vpos = oe
        if data[vpos] == 0x01:  # critical flag
            _, _, vpos = _read(data, vpos)
        _, vs, ve = _read(data, vpos)
        yield data[es:oe], data[vs:ve]
        pos = ee


def parse_crl(der: bytes) -> ParsedCrl:
    """Split a DER CRL into what a cache needs; malformed input is MalformedInput."""
    if der[:1] != b"\x30":
        raise errors.MalformedInput("CRL: not a DER CertificateList")
    try:
        tag, start, end = _read(der, 0)
        if tag != 0x30 or end != len(der):
            raise errors.MalformedInput("CRL: not a DER CertificateList")
        ttag, ts, te = _read(der, start)
        tbs = der[start:te]
        atag, _, ae = _read(der, te)
        stag, ss, se = _read(der, ae)
        if ttag != 0x30 or atag != 0x30 or stag != 0x03 or se != end or der[ss] != 0:
            raise errors.MalformedInput("CRL: not a DER CertificateList")
        sig_alg = der[te:ae]
        signature = der[ss + 1 : se]
        pos = ts
        t, s, e = _read(der, pos)
        if t == 0x02:  # version
            pos = e
        t, s, e = _read(der, pos)  # signature algorithm (inner)
        if der[pos:e] != sig_alg:
            raise errors.MalformedInput("CRL: inner and outer signature algorithms differ")
        issuer_start = e
        t, s, e = _read(der, issuer_start)
        issuer_der = der[issuer_start:e]
        t, s, e = _read(der, e)
        this_update = _parse_time(t, der[s:e])
        next_update = None
        pos = e
        revoked_start = revoked_end = 0
        number = delta_of = None
        while pos < te:
            t, s, e = _read(der, pos)
            if t in (0x17, 0x18):
                next_update = _parse_time(t, der[s:e])
            elif t == 0x30:
                revoked_start, revoked_end = s, e
            elif t == 0xA0:
                number, delta_of = _crl_extensions(der[s:e])
            pos = e
    except (IndexError, UnicodeDecodeError):
        raise errors.MalformedInput("CRL: malformed") from None
    return ParsedCrl(
        tbs, sig_alg, signature, issuer_der, this_update, next_update, number, delta_of, revoked_start, revoked_end, der
    )


def _crl_extensions(data: bytes) -> tuple[int | None, int | None]:
    """(CRL number, base CRL number of a delta) from the CRL's [0] extensions contents."""
    number = delta = None
    for oid, value in _extensions(data, 0, len(data)):
        if oid in (der_oid(OID_CRL_NUMBER), der_oid(OID_DELTA)):
            _, is_, ie = _read(value, 0)
            if oid == der_oid(OID_CRL_NUMBER):
                number = int.from_bytes(value[is_:ie], "big", signed=True)
            else:
                delta = int.from_bytes(value[is_:ie], "big", signed=True)
    return number, delta


# The signatureAlgorithm encodings a CRL may carry, by their digest: those hsmkm signs with, and
# sha256WithRSAEncryption with its parameters absent.
_SIGNATURE_DIGESTS = {
    **{SignatureScheme(kind, d).algorithm_identifier: d for kind in KeyKind for d in (Digest.SHA256, Digest.SHA384)},
    seq(der_oid(SignatureScheme(KeyKind.RSA, Digest.SHA256).oid)): Digest.SHA256,
}


def verify_crl_signature(crl: ParsedCrl, issuer_public: PublicKey) -> None:
    """Check the CRL's signature with the CA's public key; SignatureInvalid if it fails."""
    digest = _SIGNATURE_DIGESTS.get(crl.signature_algorithm)
    if digest is None:
        raise errors.UnsupportedAlgorithm("CRL signature algorithm not supported")
    try:
        SignatureScheme(key_kind(issuer_public), digest).verify(issuer_public, crl.signature, crl.tbs)
    except (InvalidSignature, ValueError):
        raise errors.SignatureInvalid("the CRL's signature does not verify with the CA's key") from None
