"""Recovery commands: request, approve, complete, list; the quorum."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from hsmkm import errors
from hsmkm.atomic import sweep_temps, write_atomic
from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.officer_changes import carry_out_change, officer_token
from hsmkm.cli.session import open_km
from hsmkm.km import custody, officer_change, recovery, recovery_export
from hsmkm.km.approval_view import prepare_approval
from hsmkm.km.config import OFFICER_KEY_LABEL


@group("recovery")
def recovery_group() -> None:
    """Key recovery under K-of-N officer approval."""


@recovery_group.command("request")
@click.argument("email")
@click.option("--reason", required=True, help="Why the keys must be recovered (kept in the audit log).")
@pass_cli
def recovery_request(cli_ctx: CliContext, email: str, reason: str) -> None:
    """Open a recovery request for all of the user's archived keys; prints its id.

    \b
    Example:
      hsmkm recovery request alice@example.com --reason "lost laptop, ticket 4711"
    """
    km = open_km(cli_ctx)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, reason, email=email)
    with km.db.read() as tx:
        quorum = custody.quorum(tx)
    digest = req.digest  # of the content as opened; approvals sign the content itself
    cli_ctx.emit(
        {
            "id": req.id,
            "email": req.email,
            "records": req.records,
            "expires_at": req.expires_at,
            "digest": digest.hex(),
            "quorum": quorum,
        },
        f"recovery request {req.id} for {req.email}: {len(req.records)} archived key(s); "
        f"needs {quorum} officer approvals before {req.expires_at}",
    )


def _confirm(cli_ctx: CliContext, text: str, yes: bool) -> None:
    """Show the officer what they are about to sign and ask (``--yes`` for scripts)."""
    click.echo(text, err=True)
    if yes:
        return
    if not sys.stdin.isatty():
        raise errors.BadInput("no terminal to confirm on: read the request above and give --yes")
    if not click.confirm("approve this request with your token?", default=False, err=True):
        raise errors.PolicyViolation("not approved")


@recovery_group.command("approve")
@click.argument("request_id", type=int)
@click.option("--officer", required=True, help="The approving officer's name.")
@click.option("--token", "token_uri", help="The officer's token (default: as registered).")
@click.option("--pin-source", "officer_pin_source", help="Source of the officer token's PIN.")
@click.option("--yes", is_flag=True, help="Approve what is shown without asking (for scripts).")
@click.option(
    "--trust-officer-set",
    is_flag=True,
    help="First approval of an officer who has not attested the officer set (a migrated KM): trust the "
    "officers' key fingerprints shown.",
)
@pass_cli
def recovery_approve(
    cli_ctx: CliContext,
    request_id: int,
    officer: str,
    token_uri: str | None,
    officer_pin_source: str | None,
    yes: bool,
    trust_officer_set: bool,
) -> None:
    """One officer's approval, signed and unsealed on the officer's own token.

    Shows the request as rebuilt from the records (the user, each certificate checked
    against the CA's signature, the reason, the expiry) and asks before signing it; the
    token then opens only the shares of those records.

    \b
    Examples:
      hsmkm recovery approve 7 --officer officer1
      hsmkm recovery approve 7 --officer ann --pin-source prompt --yes
    """
    km = open_km(cli_ctx)
    view = prepare_approval(km, request_id, officer, trust_officer_set)
    _confirm(cli_ctx, view.shown, yes)
    session = officer_token(cli_ctx, km, token_uri or view.officer_uri, officer_pin_source, officer)
    count = recovery.approve(
        km, request_id, officer, session.private_key(label=OFFICER_KEY_LABEL), view.content, trust_officer_set
    )
    with km.db.read() as tx:
        quorum = custody.quorum(tx)
    cli_ctx.emit(
        {"id": request_id, "officer": officer, "approvals": count, "quorum": quorum},
        f"{officer} approved request {request_id} ({count} of {quorum})",
    )


@recovery_group.command("complete")
@click.argument("request_id", type=int)
@click.option("--reenable", is_flag=True, help="Give the user a one-time code to re-enroll with their keys.")
@click.option(
    "--code-out",
    "code_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --reenable: write the code to this file (0600, fsynced) before the commit, not to stdout.",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the keys to this PKCS#12."
)
@click.option("--password-source", help="Source of the PKCS#12 password (with --out).")
@pass_cli
def recovery_complete(
    cli_ctx: CliContext,
    request_id: int,
    reenable: bool,
    code_out: Path | None,
    out_path: Path | None,
    password_source: str | None,
) -> None:
    """With K approvals: rebuild exactly the approved records' keys from the officers' shares.

    \b
    Examples:
      hsmkm recovery complete 7 --reenable
      hsmkm recovery complete 7 --reenable --code-out alice.code
      hsmkm recovery complete 7 --out alice-keys.p12 --password-source prompt
    """
    if reenable == (out_path is not None):
        raise errors.BadInput("give exactly one of --reenable or --out FILE.p12")
    if code_out is not None and not reenable:
        raise errors.BadInput("--code-out goes with --reenable")
    km = open_km(cli_ctx)
    status = recovery_export.request_status(km, request_id)
    deliver = None
    if out_path is not None:
        sweep_temps(out_path.parent, out_path.name)  # a killed earlier run's temporary file
        password = cli_ctx.secret(password_source, f"password of {out_path}", confirm=True)
        if out_path.exists():
            # A run killed after writing the export but before (or after) its commit: the file
            # opens with this password and holds exactly this request's keys, so the re-run
            # finishes the job; any other file there is left alone.
            if not recovery_export.holds_this_export(km, request_id, out_path, password):
                raise errors.AlreadyExists(f"{out_path} exists")
            if status is recovery.RequestStatus.COMPLETED:
                cli_ctx.emit(
                    {"id": request_id, "out": str(out_path), "already": True},
                    f"request {request_id} was already completed; its keys are in {out_path}",
                )
                return
            out_path.unlink()

        deliver = recovery_export.export_writer(km, out_path, password)

    before_commit = None
    if code_out is not None and code_out.exists():
        # Written before the commit: after a kill past the commit the code there is the live
        # one; before it, the code there was never committed and is replaced.
        if not _looks_like_code(code_out):
            raise errors.AlreadyExists(f"{code_out} exists")
        if status is recovery.RequestStatus.COMPLETED:
            cli_ctx.emit(
                {"id": request_id, "code_out": str(code_out), "already": True},
                f"request {request_id} was already completed; the one-time code is in {code_out}",
            )
            return
    if code_out is not None:
        target = code_out

        def before_commit(code: str) -> None:
            # written, fsynced and renamed before the commit: a crash cannot lose the code
            write_atomic(target, (code + "\n").encode(), mode=0o600, durable=True)

    done = recovery.complete_recovery(km, request_id, deliver, reenable, before_commit)
    data: dict[str, Any] = {"id": done.request_id, "email": done.email, "keys": len(done.keys)}
    if done.code and code_out is not None:
        data["code_out"] = str(code_out)
        text = f"{len(done.keys)} key(s) held for {done.email}; the one-time re-enrollment code is in {code_out}"
    elif done.code:
        data["code"] = done.code
        text = f"{len(done.keys)} key(s) held for {done.email}; one-time re-enrollment code (shown once): {done.code}"
    else:
        data["out"] = str(out_path)
        text = f"{len(done.keys)} key(s) of {done.email} written to {out_path}"
    cli_ctx.emit(data, text)


def _looks_like_code(path: Path) -> bool:
    """A file that holds one one-time code and nothing else (what --code-out writes)."""
    try:
        text = path.read_bytes()[:256].decode("ascii")
    except (OSError, UnicodeDecodeError):
        return False
    return re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{1,4})+\n", text) is not None


@recovery_group.command("list")
@pass_cli
def recovery_list(cli_ctx: CliContext) -> None:
    """Requests (recoveries and officer changes) with their approvals."""
    km = open_km(cli_ctx)
    rows: list[dict[str, Any]] = []
    with km.db.read() as tx:
        requests = recovery.list_requests(tx)
    for r in requests:
        approvals = recovery.approvers(km, r.id)
        rows.append(
            {
                "id": r.id,
                "kind": r.kind.value,
                "email": r.email,
                "status": r.status.value,
                "approvals": approvals,
                "expires_at": r.expires_at,
                "params": r.params,
            }
        )
    cli_ctx.emit(
        {"requests": rows},
        "\n".join(
            f"{r['id']:>4} {r['kind']:<15} {r['status']:<10} {r['email'] or ''} approvals: {', '.join(r['approvals']) or '-'}"
            for r in rows
        )
        or "no requests",
    )


@recovery_group.command("policy")
@click.option("--quorum", type=click.IntRange(1, 255), required=True, help="Approvals needed (K of N).")
@click.option("--request", "request_id", type=int, help="Complete this approved change request.")
@pass_cli
def recovery_policy(cli_ctx: CliContext, quorum: int, request_id: int | None) -> None:
    """Set K of the N officers; every record's key is re-shared among the officers.

    \b
    Example:
      hsmkm recovery policy --quorum 3; …approvals…; hsmkm recovery policy --quorum 3 --request 11
    """
    km = open_km(cli_ctx)
    officer_change.check_quorum(km, quorum)
    if quorum < 2:
        cli_ctx.warn("a quorum of 1 lets a single officer recover keys")
    carry_out_change(
        cli_ctx, km, recovery.RequestKind.POLICY, request_id, f"quorum {quorum}", {"quorum": quorum}, f"quorum {quorum}"
    )
