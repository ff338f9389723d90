"""``hsmkm init``: the key ceremony.

On the KM token: the CA key, the archive master key and the audit MAC key. Each officer's
token (a token of its own: one person, one officer) gets an officer key pair; every archive
record's key will be split K-of-N among those keys (share epoch 1). There is no recovery
token any more. Then the CA certificate (or a CSR for a subordinate CA) and the database.
Any failure undoes what was made, so a failed init leaves no KM behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors, keys
from hsmkm.atomic import write_atomic
from hsmkm.clock import Clock, system_clock
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.keys.token import ObjectKind, SecretKey, Token, TokenModule
from hsmkm.km import custody, epochs, officer_side
from hsmkm.km.anchor import TokenAnchor, anchor_lock
from hsmkm.km.audit import AuditAction, AuditLog
from hsmkm.km.config import (
    ARCHIVE_KEY_PREFIX,
    AUDIT_KEY_LABEL,
    CA_KEY_LABEL,
    EMBEDDED_KM_TOKEN,
    OFFICER_KEY_LABEL,
    Home,
    KmConfig,
    TokenRef,
)
from hsmkm.km.officer_policy import OFFICER_KEY_ALG, check_officer_token
from hsmkm.km.publisher import Publisher
from hsmkm.secrets import write_secret_file
from hsmkm.store.database import Database
from hsmkm.store.repos.artifacts import ArtifactKind
from hsmkm.store.repos.certs import CA_KIND
from hsmkm.x509 import profiles

EMBEDDED_OFFICERS = ("officer1", "officer2", "officer3")
EMBEDDED_QUORUM = 2


@dataclass
class OfficerSpec:
    """An officer named at init: their token (module, label or serial) and its PIN."""

    name: str
    module: str
    label: str | None
    serial: str | None
    pin: str
    uri: str


@dataclass
class InitRequest:
    root: Path
    ca_subject: x509.Name
    ca_key_alg: KeyAlgorithm = KeyAlgorithm.RSA3072
    user_key_alg: KeyAlgorithm = KeyAlgorithm.P256
    cert_days: int = 365
    ca_days: int = 3650
    base_url: str = "http://hsmkm.localhost/"
    csr: bool = False
    # An external module; None means the embedded SoftHSM2 default.
    module: str | None = None
    km_token_label: str | None = None
    km_pin: str | None = None
    km_pin_source: str | None = None
    recovery_token_label: str | None = None
    recovery_pin: str | None = None
    officers: list[OfficerSpec] = field(default_factory=list)
    quorum: int | None = None
    # The embedded default's trial officers: officer1..officerN.
    embedded_officers: int = len(EMBEDDED_OFFICERS)


@dataclass
class InitResult:
    home: Path
    embedded: bool
    ca_subject: str
    ca_key_alg: str
    officers: list[str]
    quorum: int
    csr_path: str | None
    ca_cert_path: str | None
    warnings: list[str]


class _Undo:
    """What the ceremony made, so a failure can take it back."""

    def __init__(self) -> None:
        self.actions: list[Callable[[], object]] = []

    def add(self, fn: Callable[[], object]) -> None:
        self.actions.append(fn)

    def run(self) -> None:
        for fn in reversed(self.actions):
            with contextlib.suppress(Exception):
                fn()


def run_ceremony(req: InitRequest, publisher: Publisher, clock: Clock = system_clock) -> InitResult:
    """The key ceremony; the CA certificate goes to ``publisher``."""
    home = Home(req.root)
    if home.exists():
        raise errors.AlreadyExists(f"a KM already exists at {req.root}; refusing to overwrite it")
    undo = _Undo()
    created_root = not req.root.exists()
    if req.root.exists() and any(req.root.iterdir()):
        raise errors.AlreadyExists(f"{req.root} is not empty; choose an empty or new directory")
    try:
        return _ceremony(req, home, publisher, clock, undo, created_root)
    except BaseException:
        undo.run()
        if created_root:
            shutil.rmtree(req.root, ignore_errors=True)
        else:
            for child in req.root.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise


@dataclass
class _Plan:
    """Where the ceremony makes its keys: the module, the KM token, the officers, the quorum."""

    embedded: bool
    module_path: str
    module: TokenModule
    softhsm_config: str | None
    km_ref: TokenRef
    km_pin: str
    km_pin_source: str
    officers: list[OfficerSpec]
    quorum: int


@dataclass
class _Officers:
    """The officers' new key pairs, each on its own token, and their attestations of set 1."""

    keys: list[tuple[str, str, PublicKey]]
    tokens: list[tuple[str, str, str]]
    statement: bytes
    attestations: list[tuple[str, bytes]]


def _ceremony(
    req: InitRequest, home: Home, publisher: Publisher, clock: Clock, undo: _Undo, created_root: bool
) -> InitResult:
    warnings: list[str] = []
    req.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan = _embedded_plan(req, home, warnings) if req.module is None else _external_plan(req, warnings)
    names = _check_officer_set(plan, warnings)
    km = plan.module.open_token(plan.km_pin, label=plan.km_ref.label)
    ca_key, audit_key = _make_km_keys(req, km, undo)
    officers = _make_officer_keys(plan, km, undo)
    now = clock()
    ca_cert, csr_path, cert_path = _ca_certificate_or_csr(req, home, publisher, ca_key, now)
    log = _create_database(req, home, plan, officers, ca_cert, audit_key, names, clock, now)
    if log.appended is not None:  # the INIT entry: the token's first anchor
        TokenAnchor(km, audit_key.hmac_sha256, anchor_lock(home)).start(log.appended)
    _save_config(req, home, plan, publisher)
    return InitResult(
        home=req.root,
        embedded=plan.embedded,
        ca_subject=req.ca_subject.rfc4514_string(),
        ca_key_alg=req.ca_key_alg.value,
        officers=names,
        quorum=plan.quorum,
        csr_path=csr_path,
        ca_cert_path=cert_path,
        warnings=warnings,
    )


def _embedded_plan(req: InitRequest, home: Home, warnings: list[str]) -> _Plan:
    """The embedded default: a SoftHSM2 store in the home, the KM token and trial officer
    tokens made there, their PINs kept in the home's secrets."""
    softhsm = keys.token_provisioner()
    module_path = softhsm.module_path()
    softhsm_config = str(softhsm.make_store(home.softhsm_dir))
    module = keys.load_module(module_path, softhsm_config)
    km_pin = custody.random_pin(16)
    softhsm.init_token(module, EMBEDDED_KM_TOKEN, custody.random_pin(), km_pin)
    write_secret_file(home.trial_pin_file("km"), km_pin)
    officer_specs = []
    for name in [f"officer{i}" for i in range(1, req.embedded_officers + 1)]:
        pin = custody.random_pin(16)
        softhsm.init_token(module, name, custody.random_pin(), pin)
        write_secret_file(home.trial_pin_file(name), pin)
        # The PIN file relative to the home, so a copied home uses its own.
        uri = f"pkcs11:token={name}?module-path={module_path}&pin-source=file:secrets/{home.trial_pin_file(name).name}"
        officer_specs.append(OfficerSpec(name, module_path, name, None, pin, uri))
    warnings.append(
        "embedded SoftHSM2 default: the KM and officer PINs are kept in the home for trials; "
        "use --module with a real HSM for production"
    )
    return _Plan(
        embedded=True,
        module_path=module_path,
        module=module,
        softhsm_config=softhsm_config,
        km_ref=TokenRef(module_path, EMBEDDED_KM_TOKEN),
        km_pin=km_pin,
        km_pin_source=f"file:secrets/{home.trial_pin_file('km').name}",
        officers=officer_specs,
        quorum=req.quorum or min(EMBEDDED_QUORUM, req.embedded_officers),
    )


def _external_plan(req: InitRequest, warnings: list[str]) -> _Plan:
    """An HSM named with --module: its KM token and the officers' tokens as given."""
    assert req.module is not None
    module_path = req.module
    module = keys.load_module(module_path)
    if req.km_pin is None:
        raise errors.SecretSourceError("--pin-source is needed with --module")
    if req.recovery_token_label:
        warnings.append("--recovery-token is deprecated and ignored: archive keys are split among the officers")
    if not req.officers:
        raise errors.BadInput("name the recovery officers with --officer NAME=URI")
    return _Plan(
        embedded=False,
        module_path=module_path,
        module=module,
        softhsm_config=None,
        km_ref=TokenRef(module_path, req.km_token_label or EMBEDDED_KM_TOKEN),
        km_pin=req.km_pin,
        km_pin_source=req.km_pin_source or "prompt",
        officers=req.officers,
        quorum=req.quorum or min(2, len(req.officers)),
    )


def _check_officer_set(plan: _Plan, warnings: list[str]) -> list[str]:
    """Unique names and a quorum between 1 and N; the officers' names."""
    names = [o.name for o in plan.officers]
    if len(set(names)) != len(names):
        raise errors.BadInput("officer names must be unique")
    if not 1 <= plan.quorum <= len(plan.officers):
        raise errors.PolicyViolation(f"quorum {plan.quorum} must be between 1 and the {len(plan.officers)} officers")
    if plan.quorum < 2:
        warnings.append("a quorum of 1 lets a single officer recover keys")
    return names


def _make_km_keys(req: InitRequest, km: Token, undo: _Undo) -> tuple[PrivateKey, SecretKey]:
    """The CA key, the first archive master key and the audit MAC key, on a KM token that
    holds none of them yet."""
    for label, cls in (
        (CA_KEY_LABEL, ObjectKind.PRIVATE_KEY),
        (AUDIT_KEY_LABEL, ObjectKind.SECRET_KEY),
        (ARCHIVE_KEY_PREFIX + "1", ObjectKind.SECRET_KEY),
    ):
        if km.has_object(label, cls):
            raise errors.AlreadyExists(f"token '{km.label}' already holds '{label}'; refusing to overwrite it")
    ca_key = km.generate_keypair(req.ca_key_alg, CA_KEY_LABEL, b"hsmkm-ca", sign=True, decrypt=False)
    undo.add(lambda: _destroy_pair(km, CA_KEY_LABEL))
    km.generate_aes_key(ARCHIVE_KEY_PREFIX + "1")
    undo.add(lambda: km.destroy(ARCHIVE_KEY_PREFIX + "1", ObjectKind.SECRET_KEY))
    audit_key = km.generate_hmac_key(AUDIT_KEY_LABEL)
    undo.add(lambda: km.destroy(AUDIT_KEY_LABEL, ObjectKind.SECRET_KEY))
    return ca_key, audit_key


def _make_officer_keys(plan: _Plan, km: Token, undo: _Undo) -> _Officers:
    """One person, one officer: a key pair on each officer's own token; then each officer
    attests the first officer set on their token (later approvals check that the set they
    work with descends from one they attested)."""
    officer_keys = []
    signing_keys = []
    officer_tokens: list[tuple[str, str, str]] = []
    for spec in plan.officers:
        omod = keys.load_module(spec.module)
        ots = omod.open_token(spec.pin, label=spec.label, serial=spec.serial)
        check_officer_token(
            ots.serial,
            ots.label,
            ots.has_object(OFFICER_KEY_LABEL),
            km.serial,
            None,
            [t[1] for t in officer_tokens],
            spec.name,
        )
        okey = ots.generate_keypair(
            OFFICER_KEY_ALG, OFFICER_KEY_LABEL, b"hsmkm-officer", sign=True, decrypt=False, derive=True
        )
        undo.add(functools.partial(_destroy_pair, ots, OFFICER_KEY_LABEL))
        officer_keys.append((spec.name, spec.uri, okey.public_key()))
        signing_keys.append(okey)
        officer_tokens.append((spec.name, ots.serial, ots.label))
    statement = officer_side.epoch_statement(
        1, plan.quorum, [(n, x, custody.public_der(p)) for x, (n, _, p) in enumerate(officer_keys, start=1)]
    )
    attestations = [
        (n, officer_side.attest(k, statement)) for (n, _, _), k in zip(officer_keys, signing_keys, strict=True)
    ]
    return _Officers(officer_keys, officer_tokens, statement, attestations)


def _ca_certificate_or_csr(
    req: InitRequest, home: Home, publisher: Publisher, ca_key: PrivateKey, now: datetime
) -> tuple[x509.Certificate | None, str | None, str | None]:
    """The self-signed CA certificate written to the home, or (``--csr``) the CSR for a
    parent CA; with the path written."""
    if req.csr:
        csr = profiles.build_csr_for_subordinate(req.ca_subject, ca_key)
        csr_file = req.root / "ca.csr"
        write_atomic(csr_file, csr.public_bytes(serialization.Encoding.PEM))
        return None, str(csr_file), None
    ca_cert = profiles.build_ca_certificate(
        subject=req.ca_subject,
        public_key=ca_key.public_key(),
        ca_key=ca_key,
        serial=profiles.random_serial(),
        not_before=now,
        not_after=now + timedelta(days=req.ca_days),
    )
    publisher.ca_certificate(ca_cert.public_bytes(serialization.Encoding.DER))
    return ca_cert, None, str(home.ca_cert)


def _create_database(
    req: InitRequest,
    home: Home,
    plan: _Plan,
    officers: _Officers,
    ca_cert: x509.Certificate | None,
    audit_key: SecretKey,
    names: list[str],
    clock: Clock,
    now: datetime,
) -> AuditLog:
    """The database in one transaction: the first officer set and its attestations, the CA
    certificate, the INIT audit entry."""
    officer_keys, officer_tokens, quorum = officers.keys, officers.tokens, plan.quorum
    db = Database.create(home.database)
    try:
        with db.write() as tx:
            tx.meta.set("archive_key_label", ARCHIVE_KEY_PREFIX + "1")
            first = epochs.create(tx, quorum, [(n, p) for n, _, p in officer_keys], epochs.EpochStatus.ACTIVE)
            custody.store_split(tx, officer_keys, {n: b"" for n, _, _ in officer_keys}, first.number, quorum, now)
            for officer, serial, label in officer_tokens:
                tx.officers.set_token(officer, serial, label)
            if epochs.statement(first) != officers.statement:
                raise errors.BadInput("the officer set stored is not the one attested")
            for name, sig in officers.attestations:
                epochs.record_attestation(tx, first.number, name, sig)
            if ca_cert is not None:
                from hsmkm.km.authority import record_certificate

                record_certificate(tx, ca_cert, CA_KIND, None, now)
                tx.artifacts.put(
                    ArtifactKind.CA_CERTIFICATE, ca_cert.public_bytes(serialization.Encoding.DER), now.isoformat()
                )
            log = AuditLog(tx, audit_key.hmac_sha256, clock)
            log.append(
                "operator",
                AuditAction.INIT,
                {
                    "ca_subject": req.ca_subject.rfc4514_string(),
                    "ca_key": req.ca_key_alg.value,
                    "km_token": plan.km_ref.label,
                    "officers": names,
                    "quorum": quorum,
                    "embedded": plan.embedded,
                    "subordinate": req.csr,
                },
            )
    finally:
        db.close()
    return log


def _save_config(req: InitRequest, home: Home, plan: _Plan, publisher: Publisher) -> None:
    """km.json, the publication folders, the home's mode: the last steps."""
    config = KmConfig(
        km_token=plan.km_ref,
        recovery_token=None,
        ca_key_alg=req.ca_key_alg,
        user_key_alg=req.user_key_alg,
        cert_days=req.cert_days,
        base_url=req.base_url if req.base_url.endswith("/") else req.base_url + "/",
        embedded=plan.embedded,
        softhsm_config=plan.softhsm_config,
        km_pin_source=plan.km_pin_source,
        subordinate=req.csr,
    )
    config.save(home)
    publisher.prepare()
    os.chmod(req.root, 0o700)


def _destroy_pair(ts: Token, label: str) -> None:
    ts.destroy(label, ObjectKind.PRIVATE_KEY)
    ts.destroy(label, ObjectKind.PUBLIC_KEY)
