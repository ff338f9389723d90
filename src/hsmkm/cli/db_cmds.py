"""Database commands: db upgrade."""

from __future__ import annotations

from hsmkm.cli.main import CliContext, cli, pass_cli
from hsmkm.km.config import Home
from hsmkm.store.database import Database


@cli.group()
def db() -> None:
    """The KM database: its schema revision."""


@db.command("upgrade")
@pass_cli
def db_upgrade(cli_ctx: CliContext) -> None:
    """Bring the KM database to this hsmkm's schema (a first-release database included).

    \b
    Example:
      hsmkm --home ./km db upgrade
    """
    before, after = Database.upgrade(Home(cli_ctx.home).database)
    cli_ctx.emit(
        {"from": before, "to": after, "upgraded": before != after},
        f"database upgraded from {before} to {after}" if before != after else f"database already at {after}",
    )
