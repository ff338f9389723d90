"""The client's revocation checks from the command line: the CRL cache, refreshed from the KM."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hsmkm import errors
from hsmkm.bounded import MAX_CRL, MAX_SMALL_FILE, read_regular
from hsmkm.cli.context import CliContext
from hsmkm.client.crlcache import CrlCache
from hsmkm.clock import system_clock
from hsmkm.x509.anchor import load_ca_certificate


def default_cache_dir(ca_cert: x509.Certificate) -> Path:
    root = os.environ.get("HSMKM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "hsmkm"
    )
    return Path(root) / "crl" / ca_cert.fingerprint(hashes.SHA256()).hex()[:16]


def client_cache(km_home: Path, cache: Path | None) -> tuple[CrlCache, x509.Certificate]:
    path = km_home / "pub" / "ca.crt"
    try:
        ca = load_ca_certificate(read_regular(path, MAX_SMALL_FILE, "the KM's CA certificate"), str(path))
    except errors.NotFound:
        raise errors.NotFound(f"no KM CA certificate under {km_home}/pub") from None
    return CrlCache(cache or default_cache_dir(ca)), ca


def fetch_into(cache: CrlCache, km_home: Path, ca: x509.Certificate) -> None:
    pub = km_home / "pub" / "crl"
    try:
        full = read_regular(pub / "full.crl", MAX_CRL, "CRL")
    except errors.NotFound:
        raise errors.Unreachable(f"no CRL published under {pub}") from None
    delta_path = pub / "delta.crl"
    delta = read_regular(delta_path, MAX_CRL, "delta CRL") if delta_path.exists() else None
    cache.update(full, delta, ca, system_clock())


def revocation_status(cli_ctx: CliContext, store: CrlCache, km_home: Path, ca: x509.Certificate, serial: int):  # type: ignore[no-untyped-def]
    """Look the serial up; refresh first when the cache is stale or empty, warn when offline."""
    now = system_clock()
    st = store.status(now)
    if st.stale:
        try:
            fetch_into(store, km_home, ca)
        except errors.HsmkmError as exc:
            if st.full_number is None:
                raise
            cli_ctx.warn(f"CRL cache is stale (next update was {st.next_update}); working offline: {exc}")
    return store.check(serial)
