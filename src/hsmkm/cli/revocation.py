"""A KM home named by ``--km`` as the client's source, and the default CRL cache directory
(from ``--cache`` or the environment) of a client working from a KM home."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hsmkm.client.km_home import KmHome


def default_cache_dir(ca_cert: x509.Certificate) -> Path:
    root = os.environ.get("HSMKM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "hsmkm"
    )
    return Path(root) / "crl" / ca_cert.fingerprint(hashes.SHA256()).hex()[:16]


def km_source(km_home: Path) -> KmHome:
    """Where the KM's CA certificate, CRLs and directory come from: its home on this machine."""
    return KmHome(km_home)
