"""What every command module shares: the context, its decorator, the group class that maps
errors to exit codes, and the printing of untrusted text."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hsmkm import errors
from hsmkm.errors import ExitCode
from hsmkm.secrets import SecretSource


@dataclass
class CliContext:
    home: Path
    json: bool
    debug: bool
    pin_source: str | None

    def secret(self, spec: str | None, what: str, confirm: bool = False) -> str:
        """Read a secret from its source (env:, file:, prompt)."""
        source = SecretSource.parse(spec or "prompt")
        prompt = None
        if sys.stdin.isatty():

            def prompt(label: str) -> str:
                return str(click.prompt(label, hide_input=True, confirmation_prompt=confirm, err=True))

        return source.read(os.environ, prompt, what)

    def emit(self, result: dict[str, Any], human: str | Callable[[], str]) -> None:
        """Print the result: one JSON object with --json, else text for people (with control
        characters and terminal escapes from names, addresses or files shown escaped)."""
        if self.json:
            click.echo(json.dumps(result, default=str, sort_keys=True))
        else:
            text = human() if callable(human) else human
            if text:
                click.echo(printable(text, keep="\n\t"))

    def warn(self, message: str) -> None:
        click.echo(f"hsmkm: warning: {printable(one_line(message))}", err=True)


def printable(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character (controls, ESC, C1, bidi overrides) but those
    in ``keep`` written as a Python escape, so that nothing read from outside drives the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else ascii(ch)[1:-1] for ch in text)


pass_cli = click.make_pass_decorator(CliContext)


def _set_field(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        obj = ctx.find_object(CliContext)
        if value and obj is not None:
            setattr(obj, name, value)

    return callback


class HsmkmGroup(click.Group):
    """Maps hsmkm errors to one line on stderr and the exit code from CLI.md.

    Every command also accepts --json, --debug and --pin-source after its name, as people
    type them.
    """

    group_class = type  # subgroups are HsmkmGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            taken = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
            for opts, field_name, flag, help_text in (
                (["--json"], "json", True, "Print exactly one JSON object on stdout."),
                (["--debug"], "debug", True, "Show tracebacks on errors."),
                (["--pin-source"], "pin_source", False, "Source of the KM token's PIN: env:NAME, file:PATH, prompt."),
            ):
                if opts[0] not in taken:
                    cmd.params.append(
                        click.Option(
                            opts, is_flag=flag, expose_value=False, callback=_set_field(field_name), help=help_text
                        )
                    )
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.HsmkmError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("hsmkm: error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            ctx.exit(int(ExitCode.UNREACHABLE))
        except errors.CERTIFICATE_ERRORS as exc:  # a certificate from a file, parsed lazily where first read
            _fail(ctx, f"a malformed certificate ({exc})", ExitCode.BAD_INPUT)
        except OverflowError:  # SQLite's integers are 64-bit: an id or count typed past that
            _fail(ctx, "a number on the command line is out of range", ExitCode.BAD_INPUT)
        except OSError as exc:  # a file named on the command line, or one of the home's
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(ctx, f"{where}{exc.strerror or type(exc).__name__}", ExitCode.BAD_INPUT)
        except Exception as exc:
            err = _database_error(exc)
            if err is not None:  # a database error no repository mapped
                _fail(ctx, str(err), err.exit_code)
            # a bug: still one line, the traceback only with --debug
            _fail(ctx, f"internal error ({type(exc).__name__}); rerun with --debug", ExitCode.BAD_INPUT)


def _database_error(exc: Exception) -> errors.HsmkmError | None:
    """The hsmkm error for a database driver's exception. Only a command that opened the store
    can raise one, so the store (and SQLAlchemy) is imported here only if already loaded: the
    user's commands (msg, enroll into a keystore) never load it."""
    if "hsmkm.store.errors" not in sys.modules:
        return None
    from hsmkm.store import errors as store_errors

    return store_errors.translate(exc) if isinstance(exc, store_errors.DATABASE_ERRORS) else None


def _fail(ctx: click.Context, message: str, code: ExitCode) -> None:
    if _debug(ctx):
        traceback.print_exc()
    click.echo(f"hsmkm: error: {printable(one_line(message))}", err=True)
    ctx.exit(int(code))


def _debug(ctx: click.Context) -> bool:
    obj = ctx.find_object(CliContext)
    return bool(obj and obj.debug) or "--debug" in sys.argv


def one_line(text: str) -> str:
    return " ".join(text.split())


def km_home_option(help_text: str, required: bool = True) -> Callable[[Any], Any]:
    """``--km HOME``: where a client reaches the KM."""
    return click.option(
        "--km", "km_home", required=required, type=click.Path(file_okay=False, path_type=Path), help=help_text
    )


def cache_option(help_text: str = "CRL cache directory.") -> Callable[[Any], Any]:
    """``--cache DIR``: the client's CRL cache."""
    return click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help=help_text)


def group(name: str | None = None) -> Callable[[Callable[..., Any]], HsmkmGroup]:
    """A standalone command group of hsmkm (main.py adds it to the root)."""
    return click.group(name, cls=HsmkmGroup)
