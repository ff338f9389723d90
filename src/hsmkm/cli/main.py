"""The ``hsmkm`` command: the root group and the one table of the commands it holds."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from hsmkm import __version__
from hsmkm.cli.context import CliContext, HsmkmGroup, one_line, printable
from hsmkm.errors import ExitCode

# Every command and group under ``hsmkm``, in one place: its name, and where it is defined. A
# command's module is imported when the command runs (or help lists it), so a user's command
# (msg, keystore) loads neither the KM's store nor the token backend it never uses.
COMMANDS: dict[str, str] = {
    "init": "km_cmds:init",
    "status": "km_cmds:status",
    "audit": "km_cmds:audit",
    "ca": "km_cmds:ca",
    "db": "db_cmds:db",
    "user": "user_cmds:user",
    "directory": "user_cmds:directory_group",
    "crl": "crl_cmds:crl_group",
    "recovery": "recovery_cmds:recovery_group",
    "officer": "officer_cmds:officer_group",
    "archive": "archive_cmds:archive_group",
    "enroll": "client_cmds:enroll",
    "keystore": "client_cmds:keystore",
    "msg": "msg_cmds:msg",
    "serve": "serve_cmds:serve",
}


def load_command(name: str) -> click.Command:
    """The command ``name`` of the table, its module imported."""
    module, attr = COMMANDS[name].split(":")
    command = getattr(importlib.import_module(f"hsmkm.cli.{module}"), attr)
    if not isinstance(command, click.Command) or command.name != name:
        raise TypeError(f"hsmkm.cli.{COMMANDS[name]} is not the command {name!r}")
    return command


class RootGroup(HsmkmGroup):
    """The root: its commands come from the table, each loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
