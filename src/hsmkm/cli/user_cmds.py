"""User commands: add, import, list, show, reenable, revoke; and the directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization

from hsmkm import addresses, errors
from hsmkm.atomic import atomic_writer
from hsmkm.bounded import MAX_SMALL_FILE, read_regular
from hsmkm.certnames import CertKind
from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.session import open_km, open_km_files
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.km import archive, directory, users
from hsmkm.km.revocation import parse_reason, revoke_user
from hsmkm.smimecaps import ClientProfile
from hsmkm.x509.crl import RevocationReason


@group()
def user() -> None:
    """Users, their enrollment codes and certificates."""


REASONS = [r.value for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]

_KEY_OPTION = click.option(
    "--key",
    "key_alg",
    type=click.Choice([a.value for a in KeyAlgorithm]),
    help="The user's encryption key algorithm (default: the KM's).",
)
_CLIENT_OPTION = click.option(
    "--client",
    type=click.Choice([c.value for c in ClientProfile]),
    help="What the user's mail clients decrypt: modern (AES-GCM, RSA-OAEP) or compat (AES-CBC, RSA PKCS#1 v1.5; "
    "Thunderbird/NSS, Outlook, gpgsm). Written into the certificates as SMIMECapabilities.",
)


def _settings(key_alg: str | None, client: str | None) -> users.UserSettings:
    return users.UserSettings(KeyAlgorithm(key_alg) if key_alg else None, ClientProfile(client) if client else None)


@user.command("add")
@click.argument("email")
@click.option("--name", help="Display name.")
@_KEY_OPTION
@_CLIENT_OPTION
@pass_cli
def user_add(cli_ctx: CliContext, email: str, name: str | None, key_alg: str | None, client: str | None) -> None:
    """Create a user and print their one-time enrollment code.

    \b
    Examples:
      hsmkm user add alice@example.com --name "Alice Liddell"
      CODE=$(hsmkm --json user add bob@example.com | jq -r .code)
      hsmkm user add carol@example.com --key rsa3072 --client compat
    """
    users.normalize_email(email)  # refused before the token is even opened
    addresses.check_name(name)
    km = open_km(cli_ctx)
    u, code = users.add_user(km, email, name, _settings(key_alg, client))
    cli_ctx.emit(
        {
            "email": u.email,
            "name": u.name,
            "code": code,
            "expires_days": km.config.code_ttl_days,
            "key": key_alg or km.config.user_key_alg.value,
            "client": client,
        },
        f"user {u.email} added\nenrollment code (give it to the user; shown once): {code}",
    )


@user.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--codes-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the codes go (mode 0600); default CSV.codes.csv.",
)
@pass_cli
def user_import(cli_ctx: CliContext, csv_file: Path, codes_out: Path | None) -> None:
    """Add many users (email,name per row); their codes go to a 0600 file.

    \b
    Example:
      hsmkm user import staff.csv --codes-out staff-codes.csv
    """
    try:
        text = read_regular(csv_file, MAX_SMALL_FILE, "CSV").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.MalformedInput(f"{csv_file}: not UTF-8 text ({exc.reason} at octet {exc.start})") from None
    rows = users.parse_user_csv(text)
    out = codes_out or csv_file.with_name(csv_file.name + ".codes.csv")
    _check_writable(out)
    km = open_km(cli_ctx)
    if out.exists():
        state = _earlier_codes_file(km, out)
        if state is users.CodesFileState.COMMITTED:
            # This import ran to its commit before (and was interrupted after): done already.
            cli_ctx.emit(
                {"users": len(rows), "codes_file": str(out), "already": True},
                f"already imported: {len(rows)} users; codes in {out}",
            )
            return
        if state is not users.CodesFileState.VOID:
            raise errors.AlreadyExists(f"{out} exists; refusing to overwrite codes")
    show = sys.stderr.isatty() and not cli_ctx.json

    def write_codes(codes: list[tuple[str, str]]) -> None:
        # Written, fsynced and renamed while the users are not yet committed.
        with atomic_writer(out, 0o600) as fh:
            fh.write(_CODES_HEADER)
            for email, code in codes:
                fh.write(f"{email},{code}\n".encode())

    try:
        with click.progressbar(length=len(rows), label="adding users", file=sys.stderr) if show else _NoBar() as bar:
            codes = users.import_users(km, rows, progress=bar.update, before_commit=write_codes)
    except BaseException:
        if out.exists() and _earlier_codes_file(km, out) is users.CodesFileState.VOID:
            with atomic_writer(out, 0o600) as fh:
                fh.write(_VOID_NOTE)
        raise
    cli_ctx.emit({"users": len(codes), "codes_file": str(out)}, f"{len(codes)} users added; codes in {out} (mode 0600)")


_CODES_HEADER = b"email,code\n"
_VOID_NOTE = b"# VOID: the import that wrote these codes failed before its users were added; no code here works\n"


def _check_writable(out: Path) -> None:
    """Fail before anything is committed if the codes file cannot be made."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise errors.BadInput(f"{out}: cannot write the codes file there")


def _earlier_codes_file(km: Any, out: Path) -> users.CodesFileState:
    try:
        text = out.read_text()
    except (OSError, UnicodeDecodeError):
        return users.CodesFileState.MIXED
    if text.encode() == _VOID_NOTE:
        return users.CodesFileState.VOID
    lines = text.splitlines()
    if not lines or lines[0] != "email,code":
        return users.CodesFileState.MIXED
    pairs = [tuple(line.split(",", 1)) for line in lines[1:] if "," in line]
    with km.db.read() as tx:
        return users.codes_file_state(tx, [(p[0], p[1]) for p in pairs])


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


@user.command("list")
@pass_cli
def user_list(cli_ctx: CliContext) -> None:
    """All users and their status.

    \b
    Example:
      hsmkm user list --json
    """
    km = open_km_files(cli_ctx)
    with km.db.read() as tx:
        rows = users.list_users(tx)
    data = [{"email": u.email, "name": u.name, "status": u.status.value, "created_at": u.created_at} for u in rows]
    cli_ctx.emit(
        {"users": data}, "\n".join(f"{u.email:<40} {u.status.value:<8} {u.name or ''}" for u in rows) or "no users"
    )


@user.command("show")
@click.argument("email")
@pass_cli
def user_show(cli_ctx: CliContext, email: str) -> None:
    """One user: status and every certificate (current and historical).

    \b
    Example:
      hsmkm user show alice@example.com
    """
    users.normalize_email(email)  # refused before the database is even opened
    km = open_km_files(cli_ctx)
    with km.db.read() as tx:
        u = users.find_user(tx, email)
        chosen = users.settings_of(tx, u.id)
    certs = directory.user_certificates(km.db.reader(), u.id)
    with km.db.read() as tx:
        archived = archive.count_for_user(tx, u.id)
    data: dict[str, Any] = {
        "email": u.email,
        "name": u.name,
        "status": u.status.value,
        "key": (chosen.key_alg or km.config.user_key_alg).value,
        "client": chosen.client.value if chosen.client else None,
        "archived_keys": archived,
        "certificates": [
            {
                "serial": c.serial,
                "kind": c.kind,
                "status": c.status,
                "current": c.current,
                "not_after": c.not_after,
                "revoked_at": c.revoked_at,
                "reason": c.reason,
            }
            for c in certs
        ],
    }
    lines = [
        f"{u.email} ({u.name or 'no name'}): {u.status.value}, {archived} archived key(s), "
        f"{data['key']} keys, client {data['client'] or 'not set'}"
    ]
    for c in certs:
        extra = f" revoked {c.revoked_at} ({c.reason})" if c.revoked_at else ""
        lines.append(f"  {c.kind:<8} {c.serial} {'current ' if c.current else 'history '}{c.status}{extra}")
    cli_ctx.emit(data, "\n".join(lines))


@user.command("reenable")
@click.argument("email")
@_KEY_OPTION
@_CLIENT_OPTION
@pass_cli
def user_reenable(cli_ctx: CliContext, email: str, key_alg: str | None, client: str | None) -> None:
    """A new one-time code: the next enrollment gives new certificates and a new key.

    \b
    Example:
      hsmkm user reenable alice@example.com
      hsmkm user reenable alice@example.com --key rsa2048 --client compat
    """
    users.normalize_email(email)  # refused before the token is even opened
    km = open_km(cli_ctx)
    code = users.reenable_user(km, email, _settings(key_alg, client))
    cli_ctx.emit({"email": email, "code": code}, f"new enrollment code for {email} (shown once): {code}")


@user.command("revoke")
@click.argument("email")
@click.option("--reason", type=click.Choice(REASONS, case_sensitive=False), help="RFC 5280 reason.")
@pass_cli
def user_revoke(cli_ctx: CliContext, email: str, reason: str | None) -> None:
    """Revoke the user's current certificates (the archive stays; 'user reenable' brings them back).

    \b
    Example:
      hsmkm user revoke bob@example.com --reason keyCompromise && hsmkm crl publish
    """
    users.normalize_email(email)  # refused before the token is even opened
    km = open_km(cli_ctx)
    done = revoke_user(km, email, parse_reason(reason))
    cli_ctx.emit(
        {"email": done.email, "serials": done.serials, "reason": done.reason.value, "revoked_at": done.at},
        f"revoked {len(done.serials)} certificate(s) of {done.email} ({done.reason.value}); publish a CRL next"
        if done.serials
        else f"{done.email} is already revoked",
    )


@group("directory")
def directory_group() -> None:
    """The directory of users' current certificates."""


@directory_group.command("show")
@click.argument("email")
@pass_cli
def directory_show(cli_ctx: CliContext, email: str) -> None:
    """The user's current encryption and signing certificates (PEM).

    \b
    Example:
      hsmkm directory show alice@example.com > alice.pem
    """
    users.normalize_email(email)  # refused before the database is even opened
    km = open_km_files(cli_ctx)
    out: dict[str, Any] = {"email": users.normalize_email(email)}
    pems = []
    for kind in (CertKind.ENCRYPT, CertKind.SIGN):
        cert = directory.current_certificate(km.db.reader(), email, kind)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        out[kind.value] = pem
        pems.append(pem)
    cli_ctx.emit(out, "".join(pems).rstrip("\n"))


@directory_group.command("sync")
@click.option(
    "--full",
    is_flag=True,
    help="Rewrite every user's entry, the CA certificate and the current CRLs from the database (and drop stale ones).",
)
@pass_cli
def directory_sync(cli_ctx: CliContext, full: bool) -> None:
    """Bring every publisher (HOME/pub/, the LDAP directory) in line with the database: the
    queued changes, or everything.

    \b
    Examples:
      hsmkm directory sync
      hsmkm directory sync --full
    """
    km = open_km_files(cli_ctx)
    if full:
        n = directory.sync_all(km.db, km.publisher)
        cli_ctx.emit({"users": n, "full": True}, f"directory rewritten from the database: {n} users")
        return
    done = directory.drain_outbox(km.db, km.publisher)
    if done.error is not None:
        raise errors.Unreachable(f"{done.pending} publication(s) still queued: {done.error}")
    cli_ctx.emit(
        {"published": done.published, "pending": done.pending, "full": False},
        f"directory synced: {done.published} queued publication(s)",
    )


@directory_group.command("ldap")
@click.option("--url", required=True, help="ldap://HOST[:PORT] (StartTLS with --ca-cert) or ldaps://HOST[:PORT].")
@click.option("--base-dn", required=True, help="The subtree the KM's entries go under.")
@click.option("--bind-dn", help="Simple bind as this DN (anonymous without).")
@click.option(
    "--password-source", help="The bind password: env:NAME or file:PATH (kept as a reference, never the password)."
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA that issued the directory's TLS certificate (PEM).",
)
@pass_cli
def directory_ldap(
    cli_ctx: CliContext,
    url: str,
    base_dn: str,
    bind_dn: str | None,
    password_source: str | None,
    ca_cert: Path | None,
) -> None:
    """Add (or change) the LDAP publisher, check that it binds, and queue every entry for it.

    \b
    Example:
      hsmkm directory ldap --url ldap://ldap.example.com --ca-cert ldap-ca.pem \\
        --base-dn ou=people,dc=example,dc=com --bind-dn cn=hsmkm,dc=example,dc=com \\
        --password-source env:LDAP_PASSWORD
    """
    from hsmkm.km import directory_setup

    if (bind_dn is None) != (password_source is None):
        raise errors.BadInput("--bind-dn and --password-source go together")
    if password_source is not None:
        cli_ctx.secret(password_source, "LDAP bind password")  # a source that cannot be read is refused now
        if password_source.startswith("file:"):  # read later from the home: made absolute first
            password_source = "file:" + str(Path(password_source[len("file:") :]).absolute())
    km = open_km_files(cli_ctx)
    settings = directory_setup.LdapConfig(
        url, base_dn, bind_dn, password_source, str(ca_cert.absolute()) if ca_cert else None
    )
    queued = directory_setup.configure_ldap(km.home, km.config, km.db, settings, cli_ctx.secret)
    cli_ctx.emit(
        {"url": url, "base_dn": base_dn, "queued": queued},
        f"LDAP publisher {url} ({base_dn}) configured; {queued} entries published",
    )
