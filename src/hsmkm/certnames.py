"""How hsmkm names a certificate to people: its e-mail address, else its subject."""

from __future__ import annotations

from cryptography import x509


def email_of(cert: x509.Certificate) -> str | None:
    """The first rfc822Name in subjectAltName, if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = san.get_values_for_type(x509.RFC822Name)
    return str(found[0]) if found else None


def label_of(cert: x509.Certificate) -> str:
    """The address, or the subject when there is none."""
    return email_of(cert) or cert.subject.rfc4514_string()
