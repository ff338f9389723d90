"""Revocation commands: user revoke, crl publish, crl fetch, crl check."""

from __future__ import annotations

import os
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hsmkm import errors
from hsmkm.bounded import MAX_CRL, MAX_SMALL_FILE, read_regular
from hsmkm.cli.main import CliContext, cli, pass_cli
from hsmkm.cli.session import open_km
from hsmkm.cli.user_cmds import user
from hsmkm.client.crlcache import CrlCache
from hsmkm.clock import system_clock
from hsmkm.km.publication import CrlKind, publish_crl
from hsmkm.km.revocation import parse_reason, revoke_user
from hsmkm.km.users import normalize_email
from hsmkm.x509.anchor import load_ca_certificate
from hsmkm.x509.crl import RevocationReason

REASONS = [r.value for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]


@user.command("revoke")
@click.argument("email")
@click.option("--reason", type=click.Choice(REASONS, case_sensitive=False), help="RFC 5280 reason.")
@pass_cli
def user_revoke(cli_ctx: CliContext, email: str, reason: str | None) -> None:
    """Revoke the user's current certificates (the archive stays; 'user reenable' brings them back).

    \b
    Example:
      hsmkm user revoke bob@example.com --reason keyCompromise && hsmkm crl publish
    """
    normalize_email(email)  # refused before the token is even opened
    km = open_km(cli_ctx)
    done = revoke_user(km, email, parse_reason(reason))
    cli_ctx.emit(
        {"email": done.email, "serials": done.serials, "reason": done.reason.value, "revoked_at": done.at},
        f"revoked {len(done.serials)} certificate(s) of {done.email} ({done.reason.value}); publish a CRL next"
        if done.serials else f"{done.email} is already revoked",
    )


@cli.group("crl")
def crl_group() -> None:
    """Certificate revocation lists."""


@crl_group.command("publish")
@click.option("--delta", is_flag=True, help="A delta CRL (changes since the last full CRL).")
@click.option("--next-update-hours", type=click.IntRange(1, 24 * 366), help="nextUpdate (default from the KM, 24 h).")
@pass_cli
def crl_publish(cli_ctx: CliContext, delta: bool, next_update_hours: int | None) -> None:
    """Sign a full (or delta) CRL on the token and publish it under HOME/pub/crl/.

    \b
    Examples:
      hsmkm crl publish
      hsmkm crl publish --delta --next-update-hours 6
    """
    km = open_km(cli_ctx)
    p = publish_crl(km, CrlKind.DELTA if delta else CrlKind.FULL, next_update_hours)
    cli_ctx.emit(
        {"kind": p.kind.value, "number": p.number, "base": p.base, "entries": p.entries, "path": p.where,
         "this_update": p.this_update.isoformat(), "next_update": p.next_update.isoformat(), "bytes": p.size,
         "installed": p.installed},
        f"{p.kind.value} CRL #{p.number}{f' (base #{p.base})' if p.base else ''}: {p.entries} entries, "
        f"{p.size} bytes, next update {p.next_update.isoformat()} -> "
        + (p.where if p.installed else f"not installed: {p.where} already holds a CRL numbered at least that"),
    )


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


@crl_group.command("fetch")
@click.option("--km", "km_home", required=True, type=click.Path(file_okay=False, path_type=Path), help="The KM's home (its pub/).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Cache directory (default under ~/.cache/hsmkm).")
@pass_cli
def crl_fetch(cli_ctx: CliContext, km_home: Path, cache: Path | None) -> None:
    """Refresh the CRL cache: the full CRL, then the delta; each verified against the CA.

    \b
    Example:
      hsmkm crl fetch --km ./km
    """
    store, ca = client_cache(km_home, cache)
    fetch_into(store, km_home, ca)
    st = store.status(system_clock())
    cli_ctx.emit(
        {"full": st.full_number, "delta": st.delta_number, "entries": st.entries,
         "next_update": st.next_update.isoformat() if st.next_update else None, "cache": str(store.dir)},
        f"CRL cache: full #{st.full_number}, delta #{st.delta_number or '-'}, {st.entries} revoked, "
        f"next update {st.next_update.isoformat() if st.next_update else '-'}",
    )


@crl_group.command("check")
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--km", "km_home", required=True, type=click.Path(file_okay=False, path_type=Path), help="The KM's home.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Cache directory.")
@pass_cli
def crl_check(cli_ctx: CliContext, certificate: Path, km_home: Path, cache: Path | None) -> None:
    """Is this certificate revoked? Exit 1 if so (from the cache; refreshed when stale).

    \b
    Example:
      hsmkm crl check --km ./km bob.pem
    """
    data = read_regular(certificate, MAX_SMALL_FILE, "certificate")
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except errors.CERTIFICATE_PARSE_ERRORS:
        raise errors.MalformedInput(f"{certificate}: not a certificate") from None
    store, ca = client_cache(km_home, cache)
    info = revocation_status(cli_ctx, store, km_home, ca, cert.serial_number)
    if info is None:
        cli_ctx.emit({"serial": f"{cert.serial_number:x}", "revoked": False}, "not revoked")
        return
    cli_ctx.emit({"serial": f"{cert.serial_number:x}", "revoked": True, "revoked_at": info.revoked_at.isoformat(),
                  "reason": info.reason.value}, "")
    raise errors.CertificateRevoked(f"revoked on {info.revoked_at.date()} ({info.reason.value})")


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
