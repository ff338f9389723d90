"""Messaging commands: msg sign, verify, encrypt, decrypt."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click
from cryptography import x509

from hsmkm import errors
from hsmkm.atomic import atomic_writer, write_atomic
from hsmkm.bounded import MAX_SMALL_FILE, open_regular, read_regular
from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.keystores import open_user_keystore
from hsmkm.cli.km_access import KmAccess, km_access, km_options, optional_km_access
from hsmkm.cli.revocation import default_cache_dir
from hsmkm.client import messaging
from hsmkm.client.crlcache import CrlCache
from hsmkm.client.revocation import check_own_signing_certificate
from hsmkm.cms import enveloped, signed
from hsmkm.cms.protect import Confidentiality
from hsmkm.keys.base import Keystore


def _read(path: str) -> bytes:
    with _input(path) as fh:
        return fh.read()


@contextlib.contextmanager
def _input(path: str) -> Iterator[BinaryIO]:
    """The message: stdin for ``-``, else a regular file (a FIFO or a device is refused)."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with open_regular(path, "message") as fh:
        yield fh


def _check_output(path: str | None) -> None:
    if path is not None and path != "-" and Path(path).is_dir():
        raise errors.BadInput(f"-o {path}: is a directory; name a file")


@contextlib.contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    _check_output(path)
    with atomic_writer(path, 0o644) as fh:
        yield fh


def _write(path: str, data: bytes, private: bool = False) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        _check_output(path)
        write_atomic(path, data, 0o600 if private else 0o644)


@group("msg")
def msg() -> None:
    """S/MIME messages: sign, verify, encrypt, decrypt."""


@msg.command("sign")
@click.option("--keystore", "ref", required=True, help="Your keystore (.epf or pkcs11: URI).")
@click.option("--password-source", help="Source of the .epf password.")
@click.option("--detached", is_flag=True, help="multipart/signed (clear-signed) instead of opaque.")
@km_options("Refresh a stale CRL cache from this KM before checking your own certificate.", required=False)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="CRL cache directory.")
@click.argument("infile", default="-")
@click.option("-o", "--out", "outfile", default="-", help="Output file (- for stdout).")
@pass_cli
def msg_sign(
    cli_ctx: CliContext,
    ref: str,
    password_source: str | None,
    detached: bool,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    cache: Path | None,
    infile: str,
    outfile: str,
) -> None:
    """Sign a message (RFC 5322/MIME in, S/MIME out), its header fields protected (RFC 9788).
    Refused (exit 1) when the cached CRL lists your signing certificate as revoked.

    \b
    Examples:
      hsmkm msg sign --keystore alice.epf --password-source env:PW note.eml -o signed.eml
      hsmkm msg sign --keystore alice.epf --detached - -o - < note.eml
      hsmkm msg sign --keystore alice.epf --km https://km.example.com:8443 note.eml -o signed.eml
    """
    _check_output(outfile)
    with _input(infile) as src:  # a FIFO or a device is refused before the keystore is opened
        ks = open_user_keystore(cli_ctx, ref, password_source)
        access = optional_km_access(cli_ctx, km, profile_dir, ca_cert, cache)
        _check_own_certificate(cli_ctx, ks, access, cache)
        with _output(outfile) as dst:
            messaging.sign_file(src, dst, ks, detached)


def _check_own_certificate(cli_ctx: CliContext, ks: Keystore, access: KmAccess | None, cache: Path | None) -> None:
    """Refuse to sign with a certificate the cached CRL lists as revoked; warn when the cache
    is stale or absent (then nothing is known either way)."""
    entry = ks.signing_entry()
    if entry is None:
        raise errors.NotFound("the keystore has no signing key")
    cert = entry.certificate
    checker, cached = None, None
    if access is not None:
        checker = access.checker()
    else:
        ca = next((c for c in ks.ca_certificates() if c.subject == cert.issuer), None)
        if cache is not None or ca is not None:
            cached = CrlCache(cache or default_cache_dir(ca))  # type: ignore[arg-type]
    check_own_signing_certificate(cert, checker, cached, cli_ctx.warn)


def _report(result: signed.VerifyResult) -> dict[str, object]:
    restored = result.restored
    return {
        "protected_headers": dict(restored.protected) if restored and restored.protected else None,
        "header_protection": restored.mode.value if restored and restored.mode else None,
        "header_mismatches": restored.mismatches if restored else [],
    }


@msg.command("verify")
@km_options("The KM (trust and CRLs).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="CRL cache directory.")
@click.argument("infile", default="-")
@click.option("-o", "--out", "outfile", help="Write the signed content here.")
@pass_cli
def msg_verify(
    cli_ctx: CliContext,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    cache: Path | None,
    infile: str,
    outfile: str | None,
) -> None:
    """Verify a signed message: signature, chain to the KM's CA, usage, revocation, and that
    the signer is who From (the protected From, RFC 9788) says. Exit 1 with the reason if it is
    invalid, the signer is revoked or is not the From. Outer header fields that differ from
    the protected ones are reported; -o writes the message as its sender wrote it.

    With a KM reached by URL (or none named: the profile's), the trust anchor and the CRL
    cache are the profile's; no network is needed while the cache is fresh.

    \b
    Examples:
      hsmkm msg verify --km ./km signed.eml -o content.txt
      hsmkm msg verify --km https://km.example.com:8443 signed.eml
      hsmkm msg verify --profile ~/.config/hsmkm signed.eml
    """
    _check_output(outfile)
    access = km_access(cli_ctx, km, profile_dir, ca_cert, cache)
    ctx = access.context()
    with _input(infile) as src:
        if outfile == "-":
            with tempfile.TemporaryDirectory(prefix="hsmkm-") as tmp:
                target = Path(tmp) / "content"
                result = messaging.verify_file(src, target, ctx)
                with open(target, "rb") as fh:
                    shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
        else:
            result = messaging.verify_file(src, Path(outfile) if outfile else None, ctx)
    messaging.remember_sender(access.correspondents(), result)
    for w in result.warnings:
        cli_ctx.warn(w)
    cli_ctx.emit(
        {
            "valid": True,
            "signer": result.email,
            "signing_time": result.signing_time.isoformat() if result.signing_time else None,
            "serial": f"{result.signer.serial_number:x}",
            "warnings": result.warnings,
            **_report(result),
        },
        f"signature OK: signed by {result.email}"
        + (f" at {result.signing_time.isoformat()}" if result.signing_time else ""),
    )


@msg.command("encrypt")
@km_options("The KM (directory, CRLs).")
@click.option("--to", "to", multiple=True, help="A recipient's address (repeatable).")
@click.option(
    "--cert",
    "cert_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A recipient's certificate file.",
)
@click.option("--from", "sender", help="Your address: a lock box for you too.")
@click.option("--sign-with", "sign_with", help="Sign first with this keystore (and add a lock box for you).")
@click.option("--password-source", help="Source of the --sign-with .epf password.")
@click.option(
    "--cipher",
    type=click.Choice([c.value for c in enveloped.ContentCipher]),
    help="Override the content cipher (default: the strongest every recipient reads).",
)
@click.option(
    "--key-transport",
    type=click.Choice([t.value for t in enveloped.KeyTransport]),
    help="Override the RSA key transport (default: per recipient, what each one reads).",
)
@click.option(
    "--hcp",
    type=click.Choice([c.value for c in Confidentiality]),
    default=Confidentiality.BASELINE.value,
    show_default=True,
    help="Header confidentiality policy (RFC 9788): what the outer header fields show.",
)
@click.option(
    "--legacy-display",
    is_flag=True,
    help="Add a legacy display element (the hidden Subject shown in the body by clients without header protection).",
)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="CRL cache directory.")
@click.option(
    "--directory",
    "ldap_url",
    metavar="ldap://HOST[:PORT]/BASE",
    help="Look recipients up in this LDAP directory (default: the profile's 'directory' setting), validated before use.",
)
@click.argument("infile", default="-")
@click.option("-o", "--out", "outfile", default="-", help="Output file (- for stdout).")
@pass_cli
def msg_encrypt(
    cli_ctx: CliContext,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    to: tuple[str, ...],
    cert_files: tuple[str, ...],
    sender: str | None,
    sign_with: str | None,
    password_source: str | None,
    cipher: str | None,
    key_transport: str | None,
    hcp: str,
    legacy_display: bool,
    cache: Path | None,
    ldap_url: str | None,
    infile: str,
    outfile: str,
) -> None:
    """Encrypt to each recipient (one lock box each, and one for you when known), with the
    strongest algorithms each one reads (RFC 8551 §2.7: what they announced in a signed message,
    else their certificate's SMIMECapabilities), the header fields protected (RFC 9788).

    With a KM reached by URL, each recipient's certificate comes from its directory, is
    validated (chain to the profile's CA, usage, address, revocation) and kept in the profile;
    when the KM cannot be reached, the kept certificate, still valid, is used. With
    --directory (or the profile's 'directory'), recipients are looked up in LDAP with
    (mail=ADDR) and each certificate found validated the same way (CRLs from the CA's entry
    there when no KM is named).

    \b
    Examples:
      hsmkm msg encrypt --km ./km --to bob@example.com --from alice@example.com note.eml -o secret.eml
      hsmkm msg encrypt --km https://km.example.com:8443 --to bob@example.com note.eml -o secret.eml
      hsmkm msg encrypt --to bob@example.com --sign-with alice.epf note.eml -o s.eml   # the profile's KM
      hsmkm msg encrypt --km ./km --to bob@example.com --sign-with alice.epf --password-source env:PW note.eml -o s.eml
      hsmkm msg encrypt --km ./km --to old@example.com --cipher aes256-cbc --key-transport rsa-pkcs1v15 in.eml -o out.eml
      hsmkm msg encrypt --km ./km --to bob@example.com --hcp hcp_no_confidentiality in.eml -o out.eml
      hsmkm msg encrypt --ca-cert ca.pem --directory ldap://ldap.example.com/ou=people,dc=example,dc=com \\
            --to bob@example.com note.eml -o secret.eml
    """
    _check_output(outfile)
    if ldap_url is not None:
        from hsmkm.client.ldap_directory import LdapLocation

        LdapLocation.parse(ldap_url)  # refused before anything is read or stored
    access = km_access(cli_ctx, km, profile_dir, ca_cert, cache)
    access.ldap_url = ldap_url or (access.profile.directory_url() if access.profile is not None else None)
    directory = access.directory()
    recipients = [directory.encryption_certificate(e) for e in to]
    for f in cert_files:
        data = read_regular(f, MAX_SMALL_FILE, "--cert")
        try:
            cert = (
                x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
            )
            _ = cert.extensions  # parsed lazily: a bad extension must fail here
        except errors.CERTIFICATE_PARSE_ERRORS:
            raise errors.MalformedInput(f"{f}: not a certificate") from None
        recipients.append(cert)
    if not recipients:
        raise errors.BadInput("name at least one recipient with --to or --cert")
    ks = open_user_keystore(cli_ctx, sign_with, password_source) if sign_with else None
    if sender:
        recipients.append(directory.encryption_certificate(sender))
    elif ks is not None and ks.encryption_entries():
        recipients.append(ks.encryption_entries()[0].certificate)
    ctx = access.context()
    choice = messaging.plan(
        recipients,
        access.correspondents(),
        enveloped.ContentCipher(cipher) if cipher else None,
        enveloped.KeyTransport(key_transport) if key_transport else None,
    )
    for note in choice.notes:
        cli_ctx.warn(note)
    policy = Confidentiality(hcp)
    if ks is not None:
        out = messaging.encrypt_message(
            _read(infile), recipients, ctx, choice.cipher, choice.transports, ks, policy, legacy_display
        )
        _write(outfile, out)
        return
    with _input(infile) as src, _output(outfile) as dst:
        messaging.encrypt_file(src, dst, recipients, ctx, choice.cipher, choice.transports, policy, legacy_display)


@msg.command("decrypt")
@click.option("--keystore", "ref", required=True, help="Your keystore (.epf or pkcs11: URI).")
@click.option("--password-source", help="Source of the .epf password.")
@km_options("The KM (to verify a signed message).", required=False)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="CRL cache directory.")
@click.argument("infile", default="-")
@click.option("-o", "--out", "outfile", default="-", help="Output file (- for stdout).")
@pass_cli
def msg_decrypt(
    cli_ctx: CliContext,
    ref: str,
    password_source: str | None,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    cache: Path | None,
    infile: str,
    outfile: str,
) -> None:
    """Decrypt with whichever of your keys (current or older) the message names; verify a
    signed message inside (its signer must be the From) and warn if its signer is revoked.
    The output is the message as its sender wrote it, protected header fields restored.

    \b
    Examples:
      hsmkm msg decrypt --keystore bob.epf --password-source env:PW --km ./km secret.eml -o note.eml
      hsmkm msg decrypt --keystore bob.epf --password-source env:PW secret.eml -o note.eml   # the profile's CA
    """
    _check_output(outfile)
    with _input(infile) as src:  # a FIFO or a device is refused before the keystore is opened
        ks = open_user_keystore(cli_ctx, ref, password_source)
        access = optional_km_access(cli_ctx, km, profile_dir, ca_cert, cache)
        ctx = access.context() if access is not None else None
        if outfile == "-":
            with tempfile.TemporaryDirectory(prefix="hsmkm-") as tmp:
                target = Path(tmp) / "plain"
                opened = messaging.decrypt_file(src, target, ks, ctx)
                with open(target, "rb") as fh:
                    shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
        else:
            opened = messaging.decrypt_file(src, Path(outfile), ks, ctx)
    if opened.signer is not None and access is not None:
        messaging.remember_sender(access.correspondents(), opened.signer)
    for w in opened.warnings:
        cli_ctx.warn(w)
    if cli_ctx.json or outfile != "-":
        signer = opened.signer.email if opened.signer else None
        restored = opened.restored
        cli_ctx.emit(
            {
                "decrypted": True,
                "key_serial": f"{opened.recipient_serial:x}",
                "signed_by": signer,
                "warnings": opened.warnings,
                "protected_headers": dict(restored.protected) if restored and restored.protected else None,
                "header_mismatches": restored.mismatches if restored else [],
            },
            f"decrypted with key {opened.recipient_serial:x}" + (f"; signed by {signer}" if signer else ""),
        )
