"""What the officer-set commands share: an officer's token opened with its PIN, and a change
(officer add or remove, a new quorum) opened for approval or carried out once approved."""

from __future__ import annotations

from typing import Any

from hsmkm.cli.context import CliContext
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.token import Token
from hsmkm.km import custody, officer_change, officer_tokens, recovery
from hsmkm.km.config import OFFICER_KEY_LABEL
from hsmkm.km.manager import KeyManager


def officer_token(cli_ctx: CliContext, km: KeyManager, uri_text: str, pin_source: str | None, who: str) -> Token:
    pin = cli_ctx.secret(pin_source or officer_tokens.pin_source(km, uri_text), f"PIN of {who}'s token")
    return officer_tokens.open_officer_token(km, uri_text, pin)


def carry_out_change(
    cli_ctx: CliContext,
    km: KeyManager,
    kind: recovery.RequestKind,
    request_id: int | None,
    reason: str,
    params: dict[str, Any],
    what: str,
) -> None:
    if request_id is None:
        req = recovery.open_request(km, kind, reason, params=params)
        with km.db.read() as tx:
            quorum = custody.quorum(tx)
        cli_ctx.emit(
            {
                "id": req.id,
                "kind": kind.value,
                "status": recovery.RequestStatus.OPEN.value,
                "quorum": quorum,
                "params": params,
            },
            f"change request {req.id} ({what}) opened: {quorum} officers approve it with "
            f"'hsmkm recovery approve {req.id} --officer NAME', then run this command again with --request {req.id}",
        )
        return
    registered = officer_change.approved_change(km, kind, request_id, params)

    def officer_key(name: str) -> PrivateKey:
        # Each officer of the new set combines its sub-shares on its own token (here, on this host).
        session = officer_token(cli_ctx, km, registered[name], None, name)
        return session.private_key(label=OFFICER_KEY_LABEL)

    result = recovery.complete_change(km, request_id, officer_key)
    if result["quorum"] < 2:
        cli_ctx.warn("a quorum of 1 lets a single officer recover keys")
    cli_ctx.emit(
        {"id": request_id, **result},
        f"{what}: officers now {', '.join(result['officers'])} (quorum {result['quorum']}); "
        "every archive record re-shared",
    )
