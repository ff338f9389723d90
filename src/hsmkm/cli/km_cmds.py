"""KM commands: init, status, audit verify, ca import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hsmkm import errors
from hsmkm.bounded import MAX_SMALL_FILE, read_regular
from hsmkm.cli.context import CliContext, group, pass_cli
from hsmkm.cli.session import open_km
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.uri import Pkcs11Uri
from hsmkm.km.ceremony import InitRequest, OfficerSpec, run_ceremony
from hsmkm.km.publishers import publisher_for
from hsmkm.x509.names import parse_dn

ALGS = click.Choice([a.value for a in KeyAlgorithm])


def _officer_spec(cli_ctx: CliContext, text: str) -> OfficerSpec:
    name, sep, uri_text = text.partition("=")
    if not sep or not name or not uri_text:
        raise errors.BadInput("--officer takes NAME=pkcs11-URI")
    uri = Pkcs11Uri.parse(uri_text)
    if not uri.module_path:
        raise errors.BadInput(f"--officer {name}: the URI needs ?module-path=")
    pin = cli_ctx.secret(uri.pin_source, f"PIN of officer {name}'s token")
    return OfficerSpec(name, uri.module_path, uri.token, uri.serial, pin, uri_text)


@click.command()
@click.option("--ca-subject", required=True, help='The CA\'s name, e.g. "CN=Example KM CA,O=Example,C=DE".')
@click.option(
    "--module", type=click.Path(dir_okay=False), help="PKCS#11 module of the KM's HSM (else the embedded SoftHSM2)."
)
@click.option("--token", "token_label", help="Label of the KM token in --module.")
@click.option("--pin-source", "init_pin_source", help="Source of the KM token's PIN (env:NAME, file:PATH, prompt).")
@click.option("--recovery-token", hidden=True, help="Deprecated and ignored: there is no recovery token any more.")
@click.option("--recovery-pin-source", hidden=True, help="Deprecated and ignored, with --recovery-token.")
@click.option("--ca-key", type=ALGS, default="rsa3072", show_default=True, help="CA key algorithm.")
@click.option("--user-key", type=ALGS, default="p256", show_default=True, help="Algorithm of users' encryption keys.")
@click.option(
    "--cert-days", type=click.IntRange(1, 3650), default=365, show_default=True, help="User certificate validity."
)
@click.option(
    "--ca-days", type=click.IntRange(1, 36500), default=3650, show_default=True, help="CA certificate validity."
)
@click.option(
    "--officer", "officers", multiple=True, metavar="NAME=URI", help="A recovery officer and their token (repeatable)."
)
@click.option("--quorum", type=click.IntRange(1, 255), help="Approvals needed for a recovery (K of N).")
@click.option("--csr", is_flag=True, help="Be a subordinate CA: write ca.csr instead of a self-signed certificate.")
@click.option(
    "--base-url",
    default="http://hsmkm.localhost/",
    show_default=True,
    help="Where HOME/pub/ is served (names in certificates).",
)
@pass_cli
def init(
    cli_ctx: CliContext,
    ca_subject: str,
    module: str | None,
    token_label: str | None,
    init_pin_source: str | None,
    recovery_token: str | None,
    recovery_pin_source: str | None,
    ca_key: str,
    user_key: str,
    cert_days: int,
    ca_days: int,
    officers: tuple[str, ...],
    quorum: int | None,
    csr: bool,
    base_url: str,
) -> None:
    """The key ceremony: CA, archive and audit keys on the KM token; officers on their own tokens.

    \b
    Examples:
      # a trial KM on the embedded SoftHSM2 (three officers, quorum 2):
      hsmkm --home ./km init --ca-subject "CN=Example KM CA,O=Example"
      # on an HSM:
      hsmkm --home ./km init --ca-subject "CN=KM CA" --module /usr/lib/softhsm/libsofthsm2.so \\
          --token km --pin-source env:KM_PIN --quorum 2 \\
          --officer 'ann=pkcs11:token=ann?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:ANN_PIN' \\
          --officer 'bo=pkcs11:token=bo?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:BO_PIN'
    """
    subject = parse_dn(ca_subject, require_cn=False)
    req = InitRequest(
        root=cli_ctx.home,
        ca_subject=subject,
        ca_key_alg=KeyAlgorithm(ca_key),
        user_key_alg=KeyAlgorithm(user_key),
        cert_days=cert_days,
        ca_days=ca_days,
        base_url=base_url,
        csr=csr,
        quorum=quorum,
    )
    if module is None and (officers or token_label or recovery_token):
        raise errors.BadInput("--token, --recovery-token and --officer need --module")
    if module is not None:
        if not Path(module).exists():
            raise errors.ModuleNotFound(f"PKCS#11 module not found: {module}")
        pin_spec = init_pin_source or cli_ctx.pin_source
        req.module = module
        req.km_token_label = token_label
        req.km_pin = cli_ctx.secret(pin_spec, "KM token PIN")
        req.km_pin_source = pin_spec
        # accepted so that older scripts still run; the ceremony warns that it is ignored
        req.recovery_token_label = recovery_token or ("(deprecated)" if recovery_pin_source else None)
        req.officers = [_officer_spec(cli_ctx, o) for o in officers]
    result = run_ceremony(req, publisher_for(cli_ctx.home))
    for w in result.warnings:
        cli_ctx.warn(w)
    out: dict[str, Any] = {
        "home": str(result.home),
        "embedded": result.embedded,
        "ca_subject": result.ca_subject,
        "ca_key": result.ca_key_alg,
        "ca_cert": result.ca_cert_path,
        "csr": result.csr_path,
        "officers": result.officers,
        "quorum": result.quorum,
    }
    lines = [f"KM initialised at {result.home}", f"  CA: {result.ca_subject} ({result.ca_key_alg})"]
    lines.append(
        f"  CA certificate: {result.ca_cert_path}"
        if result.ca_cert_path
        else f"  CSR for the parent CA: {result.csr_path} (then 'hsmkm ca import')"
    )
    lines.append(f"  recovery officers: {', '.join(result.officers)} (quorum {result.quorum})")
    cli_ctx.emit(out, "\n".join(lines))


@click.command()
@pass_cli
def status(cli_ctx: CliContext) -> None:
    """Token, keys with their custody attributes, counts, CRL age, officers and quorum.

    \b
    Example:
      hsmkm --home ./km status --json
    """
    from hsmkm.km.status import km_status

    km = open_km(cli_ctx)
    st = km_status(km)

    def human() -> str:
        lines = [
            f"home: {st['home']}{' (embedded SoftHSM2, for trials)' if st['embedded'] else ''}",
            f"database: schema revision {st['schema_revision']}",
            f"token: {st['token']['label']} (serial {st['token']['serial']}) reachable",
            f"CA: {st['ca']['subject']} ({st['ca']['key_algorithm']}), valid until {st['ca']['not_after']}",
            "keys:",
        ]
        for k in st["keys"]:
            lines.append(
                f"  {k['label']:<20} {k['key_type']:<15} sensitive={k['sensitive']} "
                f"extractable={k['extractable']} never_extractable={k['never_extractable']} usage={','.join(k['usages'])}"
            )
        c = st["counts"]
        lines.append(
            f"users: {c['users']}  certificates: {c['certificates']}  revoked: {c['revoked']}  "
            f"archived keys: {c['archived_keys']}  audit entries: {c['audit_entries']}"
        )
        crl = st["crl"]
        lines.append(
            "CRL: none published"
            if crl is None
            else f"CRL: #{crl['number']}, {crl['entries']} entries, {crl['age_seconds']} s old{' (stale)' if crl['stale'] else ''}"
        )
        ob = st["outbox"]
        line = f"publication outbox: {ob['depth']} queued ({', '.join(st['directories'])})"
        if ob["last_error"]:
            line += f"; last error {ob['last_error_at']}: {ob['last_error']}"
        lines.append(line)
        lines.append(f"officers: {', '.join(st['officers'])} (quorum {st['quorum']})")
        store = st["token_store"]
        if store["guarded"]:
            lines.append("token store: verified copy kept" + "".join(f"; {r}" for r in store["repairs"]))
        if c.get("archived_keys_to_migrate"):
            lines.append(
                f"archive: {c['archived_keys_to_migrate']} record(s) of the first release: run 'hsmkm archive migrate'"
            )
        return "\n".join(lines)

    cli_ctx.emit(st, human)


@group()
def audit() -> None:
    """The audit log: verify it, and export signed checkpoints of its head for others to keep.

    \b
    Examples:
      hsmkm --home ./km audit verify
      hsmkm --home ./km audit checkpoint -o checkpoint-$(date +%F).p7m
      hsmkm --home ./km audit verify --checkpoint checkpoint-2026-06-01.p7m
    """


@audit.command("verify")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A signed checkpoint kept outside the KM ('audit checkpoint'); the log must still hold its entry. Repeatable.",
)
@pass_cli
def audit_verify(cli_ctx: CliContext, checkpoints: tuple[Path, ...]) -> None:
    """Check the audit log: each entry's hash, link and MAC (on the token), the database's
    head, the head anchored on the KM token, and every checkpoint given.

    A cut, a reordering, an edit, an older head put back or a whole-database rollback is
    reported (exit 1) with the first bad entry and what is wrong; the database may be
    ahead of the token's anchor by what committed just before a crash.

    \b
    Examples:
      hsmkm --home ./km audit verify
      # against checkpoints the officers kept:
      hsmkm --home ./km audit verify --checkpoint ann-2026-06-01.p7m --checkpoint bo-2026-07-01.p7m
    """
    from hsmkm.km.audit_check import verify_audit

    km = open_km(cli_ctx)
    check = verify_audit(km, (read_regular(path, 1 << 20, "checkpoint") for path in checkpoints))
    report, anchor, cps = check.report, check.anchor, check.checkpoints
    result = {
        "ok": report.ok,
        "entries": report.entries,
        "first_bad": report.first_bad,
        "problem": report.problem,
        "findings": [{"entry": f.entry, "problem": f.problem, "by": f.source.value} for f in report.findings],
        "checked": [c.value for c in report.checked],
        "anchor": None if anchor is None else {"seq": anchor.seq, "crl_number": anchor.crl_number},
        "checkpoints": [{"seq": cp.seq, "at": cp.at} for cp in cps],
    }
    if not report.ok:
        cli_ctx.emit(result, "")
        more = len(report.findings) - 1
        raise errors.AuditChainBroken(
            f"audit chain broken at entry {report.first_bad}: {report.problem}"
            + (f" (and {more} more finding{'s' if more > 1 else ''}; --json lists them)" if more else "")
        )
    anchored = "no token anchor yet" if anchor is None else f"token anchor at entry {anchor.seq}"
    cp_text = f", {len(cps)} checkpoint(s) held" if cps else ""
    cli_ctx.emit(result, f"audit chain OK: {report.entries} entries ({anchored}{cp_text})")


@audit.command("checkpoint")
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the checkpoint (CMS SignedData).",
)
@click.option("--pem", is_flag=True, help="Write PEM (-----BEGIN CMS-----) instead of DER.")
@pass_cli
def audit_checkpoint(cli_ctx: CliContext, out: Path, pem: bool) -> None:
    """Export a checkpoint of the audit head, signed on the token with the CA key.

    Give it to the officers or any outside witness to keep: later, 'audit verify
    --checkpoint FILE' finds any rewrite of the log at or below it — even by someone holding
    the KM PIN. The log is verified first, and the export is itself an audit entry.
    Anyone can check the signature with openssl and the CA certificate alone.

    \b
    Examples:
      hsmkm --home ./km audit checkpoint -o checkpoint-$(date +%F).p7m
      openssl x509 -inform DER -in ./km/pub/ca.crt -out ca.pem
      openssl cms -verify -inform DER -in checkpoint-$(date +%F).p7m -CAfile ca.pem -purpose any
    """
    from hsmkm.atomic import write_atomic
    from hsmkm.km.checkpoint import make_checkpoint

    km = open_km(cli_ctx)
    cp, der = make_checkpoint(km)
    if pem:
        import base64
        import textwrap

        body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
        data = f"-----BEGIN CMS-----\n{body}\n-----END CMS-----\n".encode()
    else:
        data = der
    write_atomic(out, data, 0o644)
    cli_ctx.emit(
        {"path": str(out), "seq": cp.seq, "hash": cp.digest.hex(), "crl_number": cp.crl_number, "at": cp.at},
        f"checkpoint of audit entry {cp.seq} written to {out}",
    )


@audit.command("accept-rollback")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@pass_cli
def audit_accept_rollback(cli_ctx: CliContext, yes: bool) -> None:
    """Accept a rollback the token's anchor found, after restoring km.db from a backup.

    While the database lacks the entry anchored on the KM token, every state change is
    refused. If that is your own restore, this records an audit entry naming what the anchor
    held, continues CRL numbers above every one ever drawn, and anchors the new head. What
    the lost entries did (revocations above all) must be done again.

    \b
    Example:
      hsmkm --home ./km audit verify            # exit 1: the log ends before the anchor
      hsmkm --home ./km audit accept-rollback --yes
      hsmkm --home ./km user revoke bob@example.com --reason keyCompromise   # redo what was lost
    """
    from hsmkm.km.rollback import accept_rollback

    km = open_km(cli_ctx)
    if not yes:
        if not sys.stdin.isatty():
            raise errors.BadInput("accept-rollback needs --yes when not run on a terminal")
        click.confirm(
            "The changes after the restored backup are lost for good. Accept the rollback?", abort=True, err=True
        )
    done = accept_rollback(km)
    cli_ctx.emit(
        {
            "log_ended_at": done.log_ended_at,
            "anchored_entry": done.anchored,
            "entry": done.entry,
            "crl_number": done.crl_number,
        },
        f"rollback accepted (entry {done.entry}): the log ended at entry {done.log_ended_at}, the token's anchor "
        f"named entry {done.anchored}; the next CRL is numbered above {done.crl_number}. "
        "Redo what the lost entries did (revocations first).",
    )


@group()
def ca() -> None:
    """The KM's CA certificate."""


@ca.command("import")
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_cli
def ca_import(cli_ctx: CliContext, certificate: Path) -> None:
    """Import the subordinate CA certificate the parent CA issued for ca.csr.

    \b
    Example:
      hsmkm --home ./km ca import issued-ca.pem
    """
    from hsmkm.km.subordinate import import_ca_certificate

    km = open_km(cli_ctx)
    cert = import_ca_certificate(km, read_regular(certificate, MAX_SMALL_FILE, "certificate"))
    cli_ctx.emit(
        {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string()},
        f"CA certificate imported: {cert.subject.rfc4514_string()} issued by {cert.issuer.rfc4514_string()}",
    )
