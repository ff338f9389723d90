"""The ``hsmkm`` command: the root group and the one table of the commands it holds."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hsmkm import __version__
from hsmkm.cli import (
    archive_cmds,
    client_cmds,
    crl_cmds,
    db_cmds,
    km_cmds,
    msg_cmds,
    officer_cmds,
    recovery_cmds,
    user_cmds,
)
from hsmkm.cli.context import CliContext, HsmkmGroup, one_line, printable
from hsmkm.errors import ExitCode

COMMANDS: tuple[click.Command, ...] = (
    km_cmds.init,
    km_cmds.status,
    km_cmds.audit,
    km_cmds.ca,
    db_cmds.db,
    user_cmds.user,
    user_cmds.directory_group,
    crl_cmds.crl_group,
    recovery_cmds.recovery_group,
    officer_cmds.officer_group,
    archive_cmds.archive_group,
    client_cmds.enroll,
    client_cmds.keystore,
    msg_cmds.msg,
)
"""Every command and group under ``hsmkm``, in one place."""


@click.group(cls=HsmkmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="HSMKM_HOME",
    default=lambda: str(Path.home() / ".hsmkm"),
    show_default="~/.hsmkm",
    help="The KM's home directory (env HSMKM_HOME).",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--pin-source",
    envvar="HSMKM_PIN_SOURCE",
    default=None,
    help="Where the KM token's PIN comes from: env:NAME, file:PATH or prompt.",
)
@click.version_option(__version__, prog_name="hsmkm")
@click.pass_context
def cli(ctx: click.Context, home: Path, as_json: bool, debug: bool, pin_source: str | None) -> None:
    """hsmkm: a key management server for S/MIME with its keys in a PKCS#11 module.

    \b
    Examples:
      hsmkm --home ./km init --ca-subject "CN=Example KM CA,O=Example"
      hsmkm --home ./km user add alice@example.com --name "Alice"
      hsmkm enroll --km ./km --email alice@example.com --code-source env:CODE \\
            --keystore alice.epf --password-source env:PW
      hsmkm --home ./km status --json
    """
    ctx.obj = CliContext(home=home, json=as_json, debug=debug, pin_source=pin_source)


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    try:
        code = cli.main(prog_name="hsmkm", standalone_mode=False)
    except click.ClickException as exc:  # bad usage: one line, exit 2, as every other error
        click.echo(f"hsmkm: error: {printable(one_line(exc.format_message()))}", err=True)
        sys.exit(int(ExitCode.BAD_INPUT))
    except click.Abort:
        click.echo("hsmkm: error: aborted", err=True)
        sys.exit(int(ExitCode.BAD_INPUT))
    sys.exit(code if isinstance(code, int) else 0)
