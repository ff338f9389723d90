"""Validating a signer: the chain to a trust anchor, usage, validity and revocation, in an
explicit context with an injectable clock (certvalidator's habit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsmkm import errors
from hsmkm.certnames import label_of

MAX_DEPTH = 6


@dataclass(frozen=True)
class Revoked:
    """What a revocation source says of a revoked certificate."""

    revoked_at: datetime
    reason: str


RevocationCheck = Callable[[x509.Certificate], Revoked | None]


@dataclass
class ValidationContext:
    trust_anchors: list[x509.Certificate]
    now: datetime
    revocation: RevocationCheck | None = None
    extra_certs: list[x509.Certificate] = field(default_factory=list)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, Exception):
        return False


def build_chain(
    cert: x509.Certificate, pool: list[x509.Certificate], anchors: list[x509.Certificate]
) -> list[x509.Certificate]:
    """cert, intermediates…, anchor; ValidationFailed if no path reaches an anchor."""
    chain = [cert]
    current = cert
    for _ in range(MAX_DEPTH):
        for anchor in anchors:
            if current == anchor or _issued_by(current, anchor):
                if current != anchor:
                    chain.append(anchor)
                return chain
        nxt = next((c for c in pool if c not in chain and _issued_by(current, c)), None)
        if nxt is None:
            break
        chain.append(nxt)
        current = nxt
    raise errors.ValidationFailed(f"{label_of(cert)}: certificate does not chain to the KM's CA")


def validate_signer(
    cert: x509.Certificate, pool: list[x509.Certificate], ctx: ValidationContext, signing_time: datetime | None
) -> list[str]:
    """Raise if the signer's certificate is not acceptable; return warnings otherwise."""
    warnings: list[str] = []
    chain = build_chain(cert, pool + ctx.extra_certs, ctx.trust_anchors)
    at = signing_time or ctx.now
    if signing_time is not None and signing_time > ctx.now:
        warnings.append("the signing time is in the future")
        at = ctx.now
    for c in chain:
        if not (c.not_valid_before_utc <= at <= c.not_valid_after_utc):
            raise errors.ValidationFailed(f"{label_of(c)}: certificate not valid at {at.isoformat()}")
    for ca in chain[1:]:
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise errors.ValidationFailed(f"{label_of(ca)}: issuer is not a CA")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (ku.digital_signature or ku.content_commitment):
            raise errors.ValidationFailed(f"{label_of(cert)}: certificate not for signing")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise errors.ValidationFailed(f"{label_of(cert)}: certificate not for e-mail protection")
    except x509.ExtensionNotFound:
        pass
    if ctx.now > cert.not_valid_after_utc:
        warnings.append(f"{label_of(cert)}'s certificate has expired since it signed")
    if ctx.revocation is not None:
        revoked = ctx.revocation(cert)
        if revoked is not None:
            raise errors.CertificateRevoked(
                f"signer {label_of(cert)} revoked on {revoked.revoked_at.date().isoformat()} ({revoked.reason})"
            )
    return warnings


def check_recipient(cert: x509.Certificate, ctx: ValidationContext) -> None:
    """A recipient's certificate must chain to the CA, be valid now and not be revoked."""
    build_chain(cert, ctx.extra_certs, ctx.trust_anchors)
    if not (cert.not_valid_before_utc <= ctx.now <= cert.not_valid_after_utc):
        raise errors.ValidationFailed(f"{label_of(cert)}: certificate expired or not yet valid; not encrypting to it")
    if ctx.revocation is not None:
        revoked = ctx.revocation(cert)
        if revoked is not None:
            raise errors.CertificateRevoked(
                f"recipient {label_of(cert)} revoked on {revoked.revoked_at.date().isoformat()} ({revoked.reason}); "
                "not encrypting to it"
            )
