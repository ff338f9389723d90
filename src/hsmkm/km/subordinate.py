"""A subordinate CA: importing the certificate the parent CA issued for the KM's key."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.km import directory
from hsmkm.km.audit import AuditAction
from hsmkm.km.authority import record_certificate
from hsmkm.km.manager import KeyManager
from hsmkm.store.repos.artifacts import ArtifactKind
from hsmkm.store.repos.certs import CA_KIND


def import_ca_certificate(km: KeyManager, data: bytes) -> x509.Certificate:
    """Check that the certificate is a CA certificate for the KM's CA key, then install it."""
    if km.home.ca_cert.exists():
        raise errors.AlreadyExists("the KM already has a CA certificate")
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:
        raise errors.MalformedInput("not an X.509 certificate (PEM or DER)") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, pub) != km.ca_key.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise errors.PolicyViolation("the certificate is not for the KM's CA key")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise errors.PolicyViolation("the certificate is not a CA certificate (basicConstraints CA:true)")
    with km.change(
        AuditAction.CA_IMPORT, subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string()
    ) as ch:
        der = cert.public_bytes(serialization.Encoding.DER)
        record_certificate(ch.tx, cert, CA_KIND, None, km.clock())
        ch.tx.artifacts.put(ArtifactKind.CA_CERTIFICATE, der, km.clock().isoformat())
        ch.tx.outbox.queue_artifact(ArtifactKind.CA_CERTIFICATE, km.clock().isoformat())
    directory.drain_outbox(km.db, km.publisher)
    return cert
