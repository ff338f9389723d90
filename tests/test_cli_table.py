"""The command line is one table: every command of the contract is there, with its help, and
no command module reaches back into another or into main.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hsmkm.cli.main import COMMANDS, cli

CLI_DIR = Path(__file__).resolve().parents[1] / "src" / "hsmkm" / "cli"

# The commands CLI.md names for this release (its tables), as `hsmkm …` paths.
CONTRACT = [
    "init",
    "status",
    "officer add",
    "officer remove",
    "officer list",
    "recovery policy",
    "user add",
    "user import",
    "user list",
    "user show",
    "user revoke",
    "user reenable",
    "crl publish",
    "crl fetch",
    "crl check",
    "recovery request",
    "recovery approve",
    "recovery complete",
    "recovery list",
    "audit verify",
    "audit checkpoint",
    "audit accept-rollback",
    "directory show",
    "directory sync",
    "archive migrate",
    "archive rotate",
    "ca import",
    "enroll",
    "keystore info",
    "keystore passwd",
    "keystore repair",
    "msg sign",
    "msg verify",
    "msg encrypt",
    "msg decrypt",
    "serve",
]


def _find(path: str) -> click.Command | None:
    cmd: click.Command | None = cli
    for part in path.split():
        cmd = cmd.get_command(click.Context(cmd), part) if isinstance(cmd, click.Group) else None
    return cmd


@pytest.mark.parametrize("path", CONTRACT)
def test_every_command_of_the_contract_is_there_with_its_help(path: str) -> None:
    assert _find(path) is not None, f"hsmkm {path} is missing"
    res = CliRunner().invoke(cli, [*path.split(), "--help"], prog_name="hsmkm")
    assert res.exit_code == 0, res.output
    assert f"Usage: hsmkm {path}" in res.output
    if not isinstance(_find(path), click.Group):
        for shared in ("--json", "--debug", "--pin-source"):
            assert shared in res.output, f"hsmkm {path} lacks {shared}"


def test_the_root_holds_exactly_the_table() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    loaded = [cli.get_command(ctx, name) for name in COMMANDS]
    assert [c.name if c is not None else None for c in loaded] == list(COMMANDS)
    assert all(isinstance(c, click.Command) for c in loaded)


def test_a_users_message_command_loads_neither_the_store_nor_the_token_backend() -> None:
    """The table loads a command's module when it runs: ``msg`` imports no KM store, no
    SQLAlchemy and no PKCS#11 backend (its start-up time and memory are a mail client's)."""
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from hsmkm.cli.main import cli\n"
        "res = CliRunner().invoke(cli, ['msg', 'verify', '--help'])\n"
        "assert res.exit_code == 0, res.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'pkcs11')"
        " or m.startswith(('hsmkm.store', 'hsmkm.km'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_command_modules_import_only_the_context_and_helpers() -> None:
    modules = {p.stem for p in CLI_DIR.glob("*_cmds.py")}
    for path in CLI_DIR.glob("*_cmds.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else ([a.name for a in node.names] if isinstance(node, ast.Import) else [])
            )
            for name in names:
                if name.startswith("hsmkm.cli."):
                    leaf = name.split(".")[2]
                    assert leaf not in modules | {"main", "commands"}, f"{path.name} imports {name}"
