"""The client's sources and CRL cache as the command line chooses them: a KM home named by
``--km``, and the cache directory from ``--cache`` or the environment."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hsmkm.cli.context import CliContext
from hsmkm.client.crlcache import CrlCache
from hsmkm.client.km_home import KmHome
from hsmkm.client.revocation import RevocationChecker


def default_cache_dir(ca_cert: x509.Certificate) -> Path:
    root = os.environ.get("HSMKM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "hsmkm"
    )
    return Path(root) / "crl" / ca_cert.fingerprint(hashes.SHA256()).hex()[:16]


def km_source(km_home: Path) -> KmHome:
    """Where the KM's CA certificate, CRLs and directory come from: its home on this machine."""
    return KmHome(km_home)


def revocation_checker(cli_ctx: CliContext, km_home: Path, cache: Path | None) -> RevocationChecker:
    """The CRL cache of the KM's CA, refreshed from the KM when stale."""
    source = km_source(km_home)
    ca = source.ca_certificate()
    return RevocationChecker(CrlCache(cache or default_cache_dir(ca)), source, ca, cli_ctx.warn)
