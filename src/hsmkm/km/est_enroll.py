"""KM-side EST enrollment (RFC 7030): one code, two stages — SIGN (simpleenroll: the signing
certificate for the CSR's key) and KEY (serverkeygen: the KM makes, archives and certifies the
encryption key) — in either order, and the archived key history of a recovery code."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from hsmkm.est.csr import EstCsr
from hsmkm.km.manager import KeyManager


@dataclass(frozen=True)
class KeyIssued:
    """A key the KM sends: its certificate, and the key in a key part (est.keypart.seal) under
    the KEK ``est.keypart.kek(code, req.decrypt_key_id)`` whose kekid is that identifier."""

    cert: x509.Certificate
    key_part: bytes  # DER ContentInfo(EnvelopedData)


def simple_enroll(km: KeyManager, email: str, code: str, req: EstCsr) -> x509.Certificate:
    """The SIGN stage: the signing certificate for the CSR's key.

    A wrong code or unknown address is ``CodeRejected`` (one attempt counted); the CSR must
    name exactly ``email``. Asked again with the same code within the replay window: the same
    certificate, if the CSR names the same public key (a different one is refused).
    """
    raise NotImplementedError


def server_keygen(km: KeyManager, email: str, code: str, req: EstCsr) -> KeyIssued:
    """The KEY stage: a new encryption key, archived double-wrapped in the transaction that
    records the stage, its certificate, and the key sealed for the CSR's DecryptKeyIdentifier.

    Asked again with the same code within the replay window: the same certificate and key in
    a new key part for the new DecryptKeyIdentifier.
    """
    raise NotImplementedError


def key_history(km: KeyManager, email: str, code: str, req: EstCsr) -> list[KeyIssued]:
    """The archived keys released by a recovery code's KEY stage, each for the request's
    DecryptKeyIdentifier; ``[]`` for an ordinary code; refused before the KEY stage."""
    raise NotImplementedError


def ca_certificates(km: KeyManager) -> list[x509.Certificate]:
    """The certificates of EST cacerts: the KM CA."""
    raise NotImplementedError


def csr_attributes(km: KeyManager) -> bytes:
    """The DER CsrAttrs of EST csrattrs: the key types the KM accepts, the address, and the
    DecryptKeyIdentifier for serverkeygen."""
    raise NotImplementedError
