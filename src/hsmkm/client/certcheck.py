"""What a client checks of a user's certificate it is given by the KM (in an enrollment
answer, or from the directory) before it keeps or uses it."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsmkm import errors
from hsmkm.addresses import normalize_email
from hsmkm.cms.validation import RevocationCheck


def names(cert: x509.Certificate) -> set[str]:
    """The addresses in subjectAltName (rfc822Name), normalised; malformed ones are left out."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    out: set[str] = set()
    for name in san.get_values_for_type(x509.RFC822Name):
        try:
            out.add(normalize_email(str(name)))
        except errors.BadInput:
            continue
    return out


def check_issued(cert: x509.Certificate, ca: x509.Certificate, email: str, what: str) -> None:
    """Issued by ``ca`` (its signature checked), naming ``email`` in subjectAltName, for e-mail
    protection (extendedKeyUsage)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise errors.ValidationFailed(f"{what}: not issued by the profile's CA") from None
    if normalize_email(email) not in names(cert):
        raise errors.ValidationFailed(f"{what}: it does not name {email}")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise errors.ValidationFailed(f"{what}: no extended key usage") from None
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
        raise errors.ValidationFailed(f"{what}: not for e-mail protection")


def key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def is_for_encryption(cert: x509.Certificate) -> bool:
    ku = key_usage(cert)
    return ku is not None and (ku.key_encipherment or ku.key_agreement)


def is_for_signing(cert: x509.Certificate) -> bool:
    ku = key_usage(cert)
    return ku is not None and (ku.digital_signature or ku.content_commitment)


def check_recipient(
    cert: x509.Certificate,
    ca: x509.Certificate,
    email: str,
    now: datetime,
    revocation: RevocationCheck | None,
) -> None:
    """A recipient's encryption certificate, before it is kept or used: issued by the CA for
    this address, for encryption, valid now, not revoked (as far as the CRL cache knows)."""
    what = f"the directory's certificate for {email}"
    check_issued(cert, ca, email, what)
    if not is_for_encryption(cert):
        raise errors.ValidationFailed(f"{what}: not for encryption")
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise errors.ValidationFailed(f"{what}: expired or not yet valid")
    revoked = revocation(cert) if revocation is not None else None
    if revoked is not None:
        raise errors.CertificateRevoked(
            f"{what}: revoked on {revoked.revoked_at.date().isoformat()} ({revoked.reason})"
        )
