"""How hsmkm names a certificate: to people, its e-mail address, else its subject; as a file
of the KM's published directory, ``pub/certs/EMAIL.{enc,sign}.crt``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from cryptography import x509

from hsmkm.addresses import address_file

CERTS_FOLDER = "certs"  # the directory's folder under the publication folder (pub/)


class CertKind(str, Enum):
    """Which of a user's two certificates."""

    SIGN = "sign"
    ENCRYPT = "encrypt"

    @property
    def file_suffix(self) -> str:
        return _FILE_SUFFIX[self]


_FILE_SUFFIX = {CertKind.ENCRYPT: ".enc.crt", CertKind.SIGN: ".sign.crt"}


def cert_file(certs_dir: Path, email: str, kind: CertKind) -> Path:
    """The directory file of the user's certificate of this kind; an address that would name a
    path outside the folder is refused (BadInput)."""
    return address_file(certs_dir, email, kind.file_suffix)


def cert_files(certs_dir: Path, email: str) -> dict[CertKind, Path]:
    """The user's directory files, the encryption certificate's first."""
    return {kind: cert_file(certs_dir, email, kind) for kind in (CertKind.ENCRYPT, CertKind.SIGN)}


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
