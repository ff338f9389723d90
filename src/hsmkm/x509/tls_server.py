"""The profile of ``hsmkm serve``'s own TLS certificate, issued by the KM CA for the listen names.

A P-256 key; basicConstraints critical CA:false; keyUsage critical digitalSignature (an
ECDHE-ECDSA handshake signs, nothing else); EKU serverAuth; SAN with each name as dNSName or
iPAddress (RFC 6125: clients match the SAN, the CN is for display only); SKI, AKI; an
optional CRL distribution point and AIA caIssuers (the KM's ``http://`` URLs); a short validity (``VALIDITY``, never past the issuer's),
so that a stolen key file expires soon and a restart issues afresh. No certificatePolicies:
a private CA asserts none of the CA/Browser Forum's policy OIDs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from hsmkm import errors
from hsmkm.keys.algorithms import digest_for_key
from hsmkm.keys.base import PrivateKey
from hsmkm.x509.profiles import BACKDATE, _aki_for, _ski, random_serial

VALIDITY = timedelta(days=30)
MAX_NAMES = 16
_MAX_CN = 64
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for the server certificate."""
    return ec.generate_private_key(ec.SECP256R1())


def general_name(name: str) -> x509.GeneralName:
    """An IP address (v4 or v6) as iPAddress, else a lower-case LDH host name as dNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    host = name.lower().rstrip(".")
    labels = host.split(".")
    if not host or len(host) > 253 or not host.isascii() or not all(_LABEL.fullmatch(label) for label in labels):
        raise errors.BadInput(f"not a host name or IP address: {name!r}")
    if labels[-1].isdigit():
        raise errors.BadInput(f"not a host name or IP address: {name!r}")
    if len(labels) < 2:
        # RFC 5280 §4.2.1.6 wants a domain name; "localhost" and other single labels are not
        raise errors.BadInput(f"a server name must be fully qualified or an IP address: {name!r}")
    return x509.DNSName(host)


def build_tls_server_certificate(
    names: Sequence[str],
    public_key: ec.EllipticCurvePublicKey,
    issuer_cert: x509.Certificate,
    ca_key: PrivateKey,
    now: datetime,
    validity: timedelta = VALIDITY,
    crl_url: str | None = None,
    ca_issuers_url: str | None = None,
) -> x509.Certificate:
    """The server certificate for ``names`` (the first one is also the subject CN if it fits)."""
    if not 1 <= len(names) <= MAX_NAMES:
        raise errors.BadInput(f"a server certificate names 1 to {MAX_NAMES} hosts")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise errors.UnsupportedAlgorithm("the server certificate's key must be P-256")
    if not timedelta(0) < validity <= VALIDITY:
        raise errors.BadInput(f"a server certificate is valid for at most {VALIDITY.days} days")
    general = list(dict.fromkeys(general_name(n) for n in names))
    first = str(general[0].value)
    # a CN holds at most 64 characters; past that the subject is empty and the SAN critical
    # (RFC 5280 §4.2.1.6)
    fits = len(first) <= _MAX_CN
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)] if fits else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, issuer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general), critical=not fits)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki_for(issuer_cert), critical=False)
    )
    if crl_url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ca_issuers_url is not None:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_issuers_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return builder.sign(ca_key, digest_for_key(ca_key).builder_hash())
