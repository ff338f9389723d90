"""The KM CA issues ``hsmkm serve``'s own TLS certificate (x509/tls_server.py's profile): one
state change, audited like every certificate the CA signs."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.x509 import tls_server
from hsmkm.x509.profiles import PublicationUrls

TLS_SERVER_KIND = "tls-server"


def issue_tls_server(km: KeyManager, names: Sequence[str], public_key: ec.EllipticCurvePublicKey) -> x509.Certificate:
    """A server certificate for ``names`` signed on the token, naming the KM's CRL and CA URLs."""
    urls = PublicationUrls(km.config.base_url)
    with km.change(AuditAction.ISSUE, kind=TLS_SERVER_KIND, names=list(names)) as ch:
        cert = tls_server.build_tls_server_certificate(
            names,
            public_key,
            km.ca_cert,
            km.ca_key,
            km.clock(),
            crl_url=urls.full_crl,
            ca_issuers_url=urls.ca_cert,
        )
        ch.details["serial"] = format(cert.serial_number, "x")
    return cert
