"""The KM reached through its home on this machine: the files it publishes under ``pub/``."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from hsmkm import errors
from hsmkm.bounded import MAX_CRL, MAX_SMALL_FILE, read_regular
from hsmkm.certnames import CERTS_FOLDER, CertKind, cert_file
from hsmkm.client.sources import CrlSet
from hsmkm.x509.anchor import load_ca_certificate


class KmHome:
    """A KM home's ``pub/``: the CA certificate, the CRLs (a ``CrlSource``) and the directory
    of users' certificates (a ``CertDirectory``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pub = root / "pub"

    def ca_certificate(self) -> x509.Certificate:
        path = self.pub / "ca.crt"
        try:
            return load_ca_certificate(read_regular(path, MAX_SMALL_FILE, "the KM's CA certificate"), str(path))
        except errors.NotFound:
            raise errors.NotFound(f"no KM CA certificate under {self.root}/pub") from None

    def fetch_crls(self) -> CrlSet:
        folder = self.pub / "crl"
        try:
            full = read_regular(folder / "full.crl", MAX_CRL, "CRL")
        except errors.NotFound:
            raise errors.Unreachable(f"no CRL published under {folder}") from None
        delta_path = folder / "delta.crl"
        delta = read_regular(delta_path, MAX_CRL, "delta CRL") if delta_path.exists() else None
        return CrlSet(full, delta)

    def encryption_certificate(self, email: str) -> x509.Certificate:
        path = cert_file(self.pub / CERTS_FOLDER, email, CertKind.ENCRYPT)
        try:
            return x509.load_der_x509_certificate(read_regular(path, MAX_SMALL_FILE, "directory"))
        except errors.NotFound:
            raise errors.NotFound(
                f"no encryption certificate for {email} in the directory (revoked or not enrolled)"
            ) from None
        except ValueError:
            raise errors.MalformedInput(f"{path}: a damaged certificate in the directory") from None
