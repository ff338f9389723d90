"""The KM's CA certificate read back from its file: parsed, and a self-signed one's own
signature checked, so that a damaged ``pub/ca.crt`` is refused by name, not used."""

from __future__ import annotations

from cryptography import exceptions as crypto_exceptions
from cryptography import x509

from hsmkm import errors

_ERRORS: tuple[type[Exception], ...] = (
    TypeError,
    *errors.CERTIFICATE_PARSE_ERRORS,
    crypto_exceptions.InvalidSignature,
    crypto_exceptions.UnsupportedAlgorithm,
)


def load_ca_certificate(der: bytes, where: str = "the CA certificate") -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        if cert.issuer == cert.subject:
            cert.verify_directly_issued_by(cert)
    except _ERRORS:
        raise errors.MalformedInput(f"{where}: a damaged CA certificate") from None
    return cert
