"""Revocation list commands: crl publish, crl fetch, crl check."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509

from hsmkm import errors
from hsmkm.bounded import MAX_SMALL_FILE, read_regular
from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.km_access import km_access, km_options
from hsmkm.cli.session import open_km
from hsmkm.clock import system_clock
from hsmkm.km.publication import CrlKind, publish_crl


@group("crl")
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
        {
            "kind": p.kind.value,
            "number": p.number,
            "base": p.base,
            "entries": p.entries,
            "path": p.where,
            "this_update": p.this_update.isoformat(),
            "next_update": p.next_update.isoformat(),
            "bytes": p.size,
            "installed": p.installed,
        },
        f"{p.kind.value} CRL #{p.number}{f' (base #{p.base})' if p.base else ''}: {p.entries} entries, "
        f"{p.size} bytes, next update {p.next_update.isoformat()} -> "
        + (p.where if p.installed else f"not installed: {p.where} already holds a CRL numbered at least that"),
    )


@crl_group.command("fetch")
@km_options("Where the CRLs come from (over http(s), by the distribution points the certificates name).")
@click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), help="Cache directory (default under ~/.cache/hsmkm)."
)
@pass_cli
def crl_fetch(
    cli_ctx: CliContext, km: str | None, profile_dir: Path | None, ca_cert: Path | None, cache: Path | None
) -> None:
    """Refresh the CRL cache: the full CRL, then the delta; each verified against the CA.

    \b
    Examples:
      hsmkm crl fetch --km ./km
      hsmkm crl fetch --km https://km.example.com:8443 --ca-cert ca.pem
      hsmkm crl fetch                      # the KM the profile names
    """
    access = km_access(cli_ctx, km, profile_dir, ca_cert, cache)
    checker = access.checker()
    checker.refresh()
    store = checker.cache
    st = store.status(system_clock())
    cli_ctx.emit(
        {
            "full": st.full_number,
            "delta": st.delta_number,
            "entries": st.entries,
            "next_update": st.next_update.isoformat() if st.next_update else None,
            "cache": str(store.dir),
        },
        f"CRL cache: full #{st.full_number}, delta #{st.delta_number or '-'}, {st.entries} revoked, "
        f"next update {st.next_update.isoformat() if st.next_update else '-'}",
    )


@crl_group.command("check")
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@km_options("The KM whose CRLs answer.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Cache directory.")
@pass_cli
def crl_check(
    cli_ctx: CliContext,
    certificate: Path,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    cache: Path | None,
) -> None:
    """Is this certificate revoked? Exit 1 if so (from the cache; refreshed when stale).

    \b
    Examples:
      hsmkm crl check --km ./km bob.pem
      hsmkm crl check --km https://km.example.com:8443 bob.pem
    """
    data = read_regular(certificate, MAX_SMALL_FILE, "certificate")
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except errors.CERTIFICATE_PARSE_ERRORS:
        raise errors.MalformedInput(f"{certificate}: not a certificate") from None
    access = km_access(cli_ctx, km, profile_dir, ca_cert, cache)
    info = access.checker().status(cert.serial_number)
    if info is None:
        cli_ctx.emit({"serial": f"{cert.serial_number:x}", "revoked": False}, "not revoked")
        return
    cli_ctx.emit(
        {
            "serial": f"{cert.serial_number:x}",
            "revoked": True,
            "revoked_at": info.revoked_at.isoformat(),
            "reason": info.reason.value,
        },
        "",
    )
    raise errors.CertificateRevoked(f"revoked on {info.revoked_at.date()} ({info.reason.value})")
