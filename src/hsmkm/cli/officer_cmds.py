"""Officer commands: list, add, remove (each change approved by a quorum of the officers)."""

from __future__ import annotations

from typing import Any

import click

from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.officer_changes import carry_out_change, officer_token
from hsmkm.cli.session import open_km
from hsmkm.km import custody, officer_change, officer_tokens, recovery


@group("officer")
def officer_group() -> None:
    """Recovery officers (changes need a quorum of the current officers)."""


@officer_group.command("list")
@pass_cli
def officer_list(cli_ctx: CliContext) -> None:
    """Officers and the quorum."""
    km = open_km(cli_ctx)
    with km.db.read() as tx:
        officers = custody.active_officers(tx)
        quorum = custody.quorum(tx)
    cli_ctx.emit(
        {"officers": [{"name": o.name, "token": o.uri} for o in officers], "quorum": quorum},
        "\n".join(f"{o.name:<16} {o.uri}" for o in officers) + f"\nquorum: {quorum} of {len(officers)}",
    )


@officer_group.command("add")
@click.argument("name")
@click.option("--token", "token_uri", required=True, help="The new officer's token (pkcs11: URI).")
@click.option("--request", "request_id", type=int, help="Complete this approved change request.")
@pass_cli
def officer_add(cli_ctx: CliContext, name: str, token_uri: str, request_id: int | None) -> None:
    """Add a recovery officer: a key pair made on their own token (one person, one officer: not
    the KM token, and not a token that already holds an officer key).

    \b
    Examples:
      hsmkm officer add dana --token 'pkcs11:token=dana?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:DANA_PIN'
      hsmkm recovery approve 9 --officer officer1; hsmkm recovery approve 9 --officer officer2
      hsmkm officer add dana --token '…' --request 9
    """
    km = open_km(cli_ctx)
    params: dict[str, Any] = {"name": name, "uri": token_uri}
    if request_id is None:
        officer_change.check_new_officer(km, name)
        session = officer_token(cli_ctx, km, token_uri, None, name)
        with km.db.read() as tx:
            others = custody.officer_token_serials(tx)
        params.update(officer_tokens.make_officer_key(km, name, session, others))
    carry_out_change(
        cli_ctx, km, recovery.RequestKind.OFFICER_ADD, request_id, f"add officer {name}", params, f"add {name}"
    )


@officer_group.command("remove")
@click.argument("name")
@click.option("--request", "request_id", type=int, help="Complete this approved change request.")
@pass_cli
def officer_remove(cli_ctx: CliContext, name: str, request_id: int | None) -> None:
    """Remove an officer (e.g. one who lost their token), with a quorum of the others.

    \b
    Example:
      hsmkm officer remove officer3; …approvals…; hsmkm officer remove officer3 --request 10
    """
    km = open_km(cli_ctx)
    carry_out_change(
        cli_ctx,
        km,
        recovery.RequestKind.OFFICER_REMOVE,
        request_id,
        f"remove officer {name}",
        {"name": name},
        f"remove {name}",
    )
