"""Client commands: enroll, keystore info|passwd|repair."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hsmkm import errors
from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.keystores import keystore_secret, open_user_keystore
from hsmkm.cli.km_access import KmAccess, km_access, km_options
from hsmkm.cli.session import open_km_at
from hsmkm.client import enroll as client_enroll
from hsmkm.client import est_enroll
from hsmkm.client.est_enroll import EstClient
from hsmkm.client.network import distribution_points
from hsmkm.client.profile import CrlUrls
from hsmkm.enroll_wire import request_email
from hsmkm.keys import new_keystore, open_keystore
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.epf import EpfKeystore
from hsmkm.keys.uri import is_pkcs11_uri
from hsmkm.km.enroll_endpoint import answer

if TYPE_CHECKING:
    from hsmkm.keys import AnyKeystore  # a type alias of both backends (importing it loads them)


def local_transport(cli_ctx: CliContext, km_home: Path, km_pin_source: str | None) -> client_enroll.Transport:
    """The KM reached through its home on this machine, in this process (HTTPS can replace it)."""

    def send(request: bytes) -> bytes:
        km = open_km_at(cli_ctx, km_home, km_pin_source, actor=f"enroll:{request_email(request)}")
        try:
            return answer(km, request)
        finally:
            km.close()

    return send


@click.command()
@km_options("The KM to enroll with.")
@click.option("--email", required=True, help="Your address, as the KM knows it.")
@click.option("--code-source", required=True, help="Where the one-time code comes from: env:NAME, file:PATH or prompt.")
@click.option("--keystore", "ref", required=True, help="A new .epf path, or a pkcs11: URI of your token.")
@click.option("--password-source", help="Source of the .epf password (env:NAME, file:PATH, prompt).")
@click.option("--km-pin-source", help="Source of the KM token's PIN, when the KM's home does not name one.")
@click.option(
    "--sign-key",
    type=click.Choice([a.value for a in KeyAlgorithm]),
    default="p256",
    show_default=True,
    help="Algorithm of the signing key made in your keystore.",
)
@click.option("--update", is_flag=True, help="Add to an existing keystore, keeping its older keys.")
@pass_cli
def enroll(
    cli_ctx: CliContext,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    email: str,
    code_source: str,
    ref: str,
    password_source: str | None,
    km_pin_source: str | None,
    sign_key: str,
    update: bool,
) -> None:
    """Make your signing key, send a CSR with your one-time code, receive your certificates
    and your encryption key (and, after a recovery, your archived keys).

    With --km https://… this speaks EST (RFC 7030) to a 'hsmkm serve': the server's TLS
    certificate and its cacerts must come from the CA certificate the profile holds (given
    once with --ca-cert); every certificate and key received is checked before the keystore
    is written.

    \b
    Examples:
      hsmkm enroll --km https://km.example.com:8443 --ca-cert ca.pem --email alice@example.com \\
            --code-source prompt --keystore alice.epf --password-source prompt
      hsmkm enroll --km ./km --email alice@example.com --code-source prompt \\
            --keystore alice.epf --password-source prompt
      hsmkm enroll --km ./km --email bob@example.com --code-source env:CODE \\
            --keystore 'pkcs11:token=bob?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:BOB_PIN'
      hsmkm enroll --km ./km --email alice@example.com --code-source env:CODE \\
            --keystore alice.epf --password-source env:PW --update
    """
    access = km_access(cli_ctx, km, profile_dir, ca_cert)
    code = cli_ctx.secret(code_source, "enrollment code")
    secret = keystore_secret(cli_ctx, ref, password_source, confirm=not update)
    target: AnyKeystore
    if update:
        target = open_keystore(ref, secret)
    else:
        target = new_keystore(ref, secret)
        if not isinstance(target, EpfKeystore) and target.signing_entry() is not None:
            raise errors.AlreadyExists(f"{ref} already holds keys; add --update to keep them and add new ones")
    if access.remote:
        ca = access.ca()
        result = est_enroll.enroll(target, EstClient(access.http()), ca, email, code, KeyAlgorithm(sign_key))
        remember_crl_urls(access, target)
    else:
        assert access.home is not None
        result = client_enroll.enroll(
            target, local_transport(cli_ctx, access.home, km_pin_source), email, code, KeyAlgorithm(sign_key)
        )
    data = {
        "email": result.email,
        "keystore": ref,
        "sign_serial": f"{result.sign_serial:x}",
        "enc_serial": f"{result.enc_serial:x}",
        "history_keys": result.history_keys,
    }
    extra = f", {result.history_keys} archived key(s) restored" if result.history_keys else ""
    cli_ctx.emit(data, f"enrolled {result.email} into {ref}{extra}")


def remember_crl_urls(access: KmAccess, ks: AnyKeystore) -> None:
    """Note in the profile where the new signing certificate says its CRLs are published."""
    entry = ks.signing_entry()
    if access.profile is not None and entry is not None:
        full, delta = distribution_points(entry.certificate)
        if full is not None:
            access.profile.set_crl_urls(CrlUrls(full, delta))


@group()
def keystore() -> None:
    """Your keystore: an .epf file or a token."""


@keystore.command("info")
@click.argument("ref")
@click.option("--password-source", help="Source of the .epf password.")
@pass_cli
def keystore_info(cli_ctx: CliContext, ref: str, password_source: str | None) -> None:
    """What is inside: the signing key, the encryption keys (current first), the CA.

    \b
    Example:
      hsmkm keystore info alice.epf --password-source env:PW
    """
    ks = open_user_keystore(cli_ctx, ref, password_source)
    info: dict[str, Any] = asdict(ks.info())
    lines = [f"keystore {ref}", f"  signing: {info['signing'] or 'none'}"]
    lines += [f"  encryption: {e}" for e in info["encryption"]] or ["  encryption: none"]
    lines += [f"  CA: {c}" for c in info["ca"]]
    cli_ctx.emit(info, "\n".join(lines))


@keystore.command("passwd")
@click.argument("ref", type=click.Path(dir_okay=False))
@click.option("--password-source", help="Source of the current password.")
@click.option("--new-password-source", help="Source of the new password.")
@pass_cli
def keystore_passwd(
    cli_ctx: CliContext, ref: str, password_source: str | None, new_password_source: str | None
) -> None:
    """Change the .epf password (the file is rewritten atomically).

    \b
    Example:
      hsmkm keystore passwd alice.epf --password-source env:OLD --new-password-source env:NEW
    """
    if is_pkcs11_uri(ref):
        raise errors.BadInput("change a token's PIN with the token's own tools")
    ks = EpfKeystore.open(Path(ref), cli_ctx.secret(password_source, f"current password of {ref}"))
    ks.change_password(cli_ctx.secret(new_password_source, f"new password of {ref}", confirm=True))
    cli_ctx.emit({"keystore": ref, "changed": True}, f"password of {ref} changed")


@keystore.command("repair")
@click.argument("ref")
@pass_cli
def keystore_repair(cli_ctx: CliContext, ref: str) -> None:
    """Give a token's certificate objects the CKA_ISSUER and CKA_SERIAL_NUMBER that NSS
    (Thunderbird) needs; tokens enrolled by earlier versions lack them.

    \b
    Example:
      hsmkm keystore repair 'pkcs11:token=alice;object=alice?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN'
    """
    if not is_pkcs11_uri(ref):
        raise errors.BadInput("keystore repair is for tokens (pkcs11: URIs); an .epf needs no repair")
    from hsmkm.keys.token_keystore import TokenKeystore  # the token backend, loaded only here

    ks = open_user_keystore(cli_ctx, ref, None)
    if not isinstance(ks, TokenKeystore):
        raise errors.BadInput(f"{ref} is not a token keystore")
    n = ks.repair()
    cli_ctx.emit({"keystore": ref, "repaired": n}, f"{n} certificate object(s) repaired on {ref}")
