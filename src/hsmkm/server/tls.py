"""The server's TLS certificate and key: the embedded default's, issued by the KM CA for the
listen names into ``HOME/tls/`` (the key a P-256 key in a 0600 file; the CA key stays on the
token) and reused while it is valid, names the same hosts and chains to the current CA; or
the operator's own pair, checked to belong together."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.atomic import write_atomic
from hsmkm.km.manager import KeyManager
from hsmkm.km.server_cert import issue_tls_server
from hsmkm.x509 import tls_server

TLS_DIR = "tls"
CERT_NAME = "server.crt"
KEY_NAME = "server.key"
LOCK_NAME = ".lock"
# A certificate this close to its end is issued afresh at start rather than reused.
RENEW_BEFORE = timedelta(days=2)
_UNREADABLE: tuple[type[Exception], ...] = (OSError, ValueError, TypeError, *errors.CERTIFICATE_ERRORS)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def default_files(root: Path) -> TlsFiles:
    folder = root / TLS_DIR
    return TlsFiles(folder / CERT_NAME, folder / KEY_NAME)


def _san(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return set(ext.value)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def reusable(files: TlsFiles, names: Sequence[str], ca: x509.Certificate, now: datetime) -> bool:
    """Whether the files hold a certificate and its key for exactly ``names``, from ``ca``,
    valid for a while yet."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        wanted = {tls_server.general_name(n) for n in names}
        return (
            _san(cert) == wanted
            and _signed_by(cert, ca)
            and cert.not_valid_before_utc <= now
            and now + RENEW_BEFORE < cert.not_valid_after_utc
            and key.public_key() == cert.public_key()
        )
    except _UNREADABLE:
        return False


def ensure_embedded(km: KeyManager, names: Sequence[str]) -> TlsFiles:
    """The embedded default's pair for ``names``: reused if it still fits, else a new key and a
    certificate issued on the token (the key written first: a crash between leaves a pair that
    does not match, which the next start replaces)."""
    files = default_files(km.home.root)
    files.cert.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(files.cert.parent, 0o700)
    with open(files.cert.parent / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two servers starting on one home issue one pair
        if reusable(files, names, km.ca_cert, km.clock()):
            return files
        return _issue(km, names, files)


def _issue(km: KeyManager, names: Sequence[str], files: TlsFiles) -> TlsFiles:
    key = tls_server.new_key()
    cert = issue_tls_server(km, names, key.public_key())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(files.key, pem_key, 0o600)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def check_pair(files: TlsFiles) -> None:
    """An operator's ``--tls-cert``/``--tls-key``: both readable PEM, the key the certificate's."""
    try:
        chain = x509.load_pem_x509_certificates(files.cert.read_bytes())
    except OSError as exc:
        raise errors.BadInput(f"--tls-cert {files.cert}: {exc.strerror}") from None
    except ValueError:
        raise errors.MalformedInput(f"--tls-cert {files.cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except OSError as exc:
        raise errors.BadInput(f"--tls-key {files.key}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise errors.MalformedInput(f"--tls-key {files.key}: not an unencrypted PEM private key") from None
    if not chain or key.public_key() != chain[0].public_key():
        raise errors.BadInput("--tls-key is not the key of --tls-cert")
