"""CRLs (RFC 5280 §5) encoded directly in DER, in time linear in their entries, and parsed
back just as directly.

cryptography's CertificateRevocationListBuilder copies its list on every added entry, so
a large CRL is quadratic there (300,000 entries took 180 s). Here each entry is a few
joined byte strings and the TBS is signed once by whatever key object is given (a token key
signs on the token).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsmkm import errors
from hsmkm.der import GENERALIZED_TIME, UTC_TIME, _len, der_int, der_oid, der_time, seq as _seq, time_seconds, tlv
from hsmkm.keys.base import PrivateKey, PublicKey


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

_REASON_EXT = {
    reason: _seq(_seq(der_oid(OID_REASON), tlv(0x04, tlv(0x0A, bytes([code])))))
    for reason, code in _CODES.items()
}
# An entry's crlEntryExtensions by reason (none when unspecified, RFC 5280 §5.3.1), and that
# of an entry whose one extension is its reason, up to the code.
_ENTRY_EXTENSIONS = {r: b"" if r is RevocationReason.UNSPECIFIED else ext for r, ext in _REASON_EXT.items()}
_ONLY_REASON = _REASON_EXT[RevocationReason.KEY_COMPROMISE][:-1]


def _signature_algorithm(key: PrivateKey) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(key, rsa.RSAPrivateKey):
        return _seq(der_oid("1.2.840.113549.1.1.11"), b"\x05\x00"), hashes.SHA256()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 384:
            return _seq(der_oid("1.2.840.10045.4.3.3")), hashes.SHA384()
        return _seq(der_oid("1.2.840.10045.4.3.2")), hashes.SHA256()
    raise errors.UnsupportedAlgorithm("CRLs are signed with RSA or ECDSA keys")


def _sign(key: PrivateKey, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), algorithm)
    return key.sign(data, ec.ECDSA(algorithm))


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
        body = b"\x02" + _len(len(sb)) + sb + when + exts[reason]
        yield (b"\x30" + bytes((len(body),)) if len(body) < 0x80 else b"\x30" + _len(len(body))) + body


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
    return sign_crl(issuer, key, b"".join(encode_entries(entries)), number, this_update, next_update,
                    delta_of, freshest_url)


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
    sig_alg, hash_alg = _signature_algorithm(key)
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
    signature = _sign(key, tbs, hash_alg)
    return _seq(tbs, sig_alg, tlv(0x03, b"\x00" + signature))


# --- parsing -----------------------------------------------------------------------------


def _read(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at ``pos``."""
    try:
        tag = data[pos]
        first = data[pos + 1]
    except IndexError:
        raise errors.MalformedInput("CRL: truncated") from None
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise errors.MalformedInput("CRL: bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(data):
        raise errors.MalformedInput("CRL: truncated")
    return tag, pos, end


def _parse_time(tag: int, raw: bytes) -> datetime:
    try:
        return datetime.fromtimestamp(time_seconds(tag, raw), timezone.utc)
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
            yield RevokedEntry(serial, datetime.fromtimestamp(seconds, timezone.utc), RevocationReason.from_code(code))

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
            elif end - e2 == reason_at + 1 and data[e2:end - 1] == only_reason:
                code = data[end - 1]
            else:
                code = _entry_reason(data, e2, end)
            if code not in _BY_CODE:
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
        atag, as_, ae = _read(der, te)
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
    return ParsedCrl(tbs, sig_alg, signature, issuer_der, this_update, next_update, number, delta_of,
                     revoked_start, revoked_end, der)


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


def verify_crl_signature(crl: ParsedCrl, issuer_public: PublicKey) -> None:
    """Check the CRL's signature with the CA's public key; SignatureInvalid if it fails."""
    from cryptography.exceptions import InvalidSignature

    algs = {
        _seq(der_oid("1.2.840.113549.1.1.11"), b"\x05\x00"): hashes.SHA256(),
        _seq(der_oid("1.2.840.113549.1.1.11")): hashes.SHA256(),
        _seq(der_oid("1.2.840.113549.1.1.12"), b"\x05\x00"): hashes.SHA384(),
        _seq(der_oid("1.2.840.10045.4.3.2")): hashes.SHA256(),
        _seq(der_oid("1.2.840.10045.4.3.3")): hashes.SHA384(),
    }
    hash_alg = algs.get(crl.signature_algorithm)
    if hash_alg is None:
        raise errors.UnsupportedAlgorithm("CRL signature algorithm not supported")
    try:
        if isinstance(issuer_public, rsa.RSAPublicKey):
            issuer_public.verify(crl.signature, crl.tbs, padding.PKCS1v15(), hash_alg)
        else:
            issuer_public.verify(crl.signature, crl.tbs, ec.ECDSA(hash_alg))
    except (InvalidSignature, ValueError):
        raise errors.SignatureInvalid("the CRL's signature does not verify with the CA's key") from None
