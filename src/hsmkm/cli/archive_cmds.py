"""Archive commands: rotate the archive master key; migrate a first-release archive."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.session import open_km
from hsmkm.km import custody, recovery

Progress = Callable[[int, int], None]
T = TypeVar("T")


def _resealing(cli_ctx: CliContext, run: Callable[[Progress], T]) -> T:
    """``run`` with a progress bar of the records re-sealed (on a terminal, stderr, not --json)."""
    if not sys.stderr.isatty() or cli_ctx.json:
        return run(lambda done, total: None)
    with click.progressbar(length=1, label="re-sealing archive records", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        return run(progress)


@group("archive")
def archive_group() -> None:
    """The key archive."""


@archive_group.command("rotate")
@pass_cli
def archive_rotate(cli_ctx: CliContext) -> None:
    """A new archive master key on the KM token; every record re-sealed under it on the token,
    in batches, resumable after a crash; then the old key is destroyed.

    \b
    Example:
      hsmkm archive rotate
    """
    from hsmkm.km.rotation import rotate_archive_key

    km = open_km(cli_ctx)
    result = _resealing(cli_ctx, lambda progress: rotate_archive_key(km, progress))
    cli_ctx.emit(
        {"old": result.old_label, "new": result.new_label, "records": result.records},
        f"archive master key rotated: {result.records} record(s) moved from {result.old_label} to "
        f"{result.new_label}; {result.old_label} destroyed",
    )


@archive_group.command("migrate")
@click.option("--request", "request_id", type=int, help="Carry out this approved migration request.")
@pass_cli
def archive_migrate(cli_ctx: CliContext, request_id: int | None) -> None:
    """Move a first-release archive (one recovery key on a recovery token) to per-record
    K-of-N shares: one last quorum-approved use of the recovery token, whose key is then
    destroyed. Resumable: after a crash, run it again with the same --request.

    \b
    Example:
      hsmkm archive migrate; hsmkm recovery approve 12 --officer officer1; …; hsmkm archive migrate --request 12
    """
    from hsmkm.km.migrate import migrate, pending_records

    km = open_km(cli_ctx)
    if request_id is None:
        req = recovery.open_request(km, recovery.RequestKind.MIGRATE, "migrate the archive to per-record shares")
        with km.db.read() as tx:
            quorum = custody.quorum(tx)
        cli_ctx.emit(
            {
                "id": req.id,
                "kind": req.kind.value,
                "status": recovery.RequestStatus.OPEN.value,
                "quorum": quorum,
                "records": pending_records(km),
            },
            f"migration request {req.id} opened for {pending_records(km)} record(s): {quorum} officers approve it with "
            f"'hsmkm recovery approve {req.id} --officer NAME', then run 'hsmkm archive migrate --request {req.id}'",
        )
        return
    result = _resealing(cli_ctx, lambda progress: migrate(km, request_id, progress))
    cli_ctx.emit(
        {"id": result.request_id, "records": result.records, "recovery_key_destroyed": result.recovery_key_destroyed},
        f"{result.records} archive record(s) moved to per-record shares; the recovery key was "
        f"{'destroyed' if result.recovery_key_destroyed else 'already gone'}",
    )
