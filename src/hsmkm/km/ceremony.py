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
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import ObjectClass

from hsmkm import errors
from hsmkm.atomic import write_atomic
from hsmkm.clock import Clock, system_clock
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.pkcs11 import Pkcs11Module, TokenSession
from hsmkm.keys.softhsm import find_softhsm_module, init_token, write_store_config
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
from hsmkm.secrets import write_secret_file
from hsmkm.store.database import Database
from hsmkm.store.repos.certs import CA_KIND
from hsmkm.x509 import profiles

EMBEDDED_OFFICERS = ("officer1", "officer2", "officer3")
EMBEDDED_QUORUM = 2
OFFICER_KEY_ALG = KeyAlgorithm.P256


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


def run_ceremony(req: InitRequest, clock: Clock = system_clock) -> InitResult:
    home = Home(req.root)
    if home.exists():
        raise errors.AlreadyExists(f"a KM already exists at {req.root}; refusing to overwrite it")
    undo = _Undo()
    created_root = not req.root.exists()
    if req.root.exists() and any(req.root.iterdir()):
        raise errors.AlreadyExists(f"{req.root} is not empty; choose an empty or new directory")
    try:
        return _ceremony(req, home, clock, undo, created_root)
    except BaseException:
        undo.run()
        if created_root:
            shutil.rmtree(req.root, ignore_errors=True)
        else:
            for child in req.root.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise


def _ceremony(req: InitRequest, home: Home, clock: Clock, undo: _Undo, created_root: bool) -> InitResult:
    warnings: list[str] = []
    req.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    embedded = req.module is None
    softhsm_config: str | None = None

    if embedded:
        module_path = find_softhsm_module()
        softhsm_config = str(write_store_config(home.softhsm_dir))
        module = Pkcs11Module.load(module_path, softhsm_config)
        km_pin = custody.random_pin(16)
        init_token(module, EMBEDDED_KM_TOKEN, custody.random_pin(), km_pin)
        write_secret_file(home.trial_pin_file("km"), km_pin)
        officer_specs = []
        for name in [f"officer{i}" for i in range(1, req.embedded_officers + 1)]:
            pin = custody.random_pin(16)
            init_token(module, name, custody.random_pin(), pin)
            write_secret_file(home.trial_pin_file(name), pin)
            # The PIN file relative to the home, so a copied home uses its own.
            uri = (
                f"pkcs11:token={name}?module-path={module_path}"
                f"&pin-source=file:secrets/{home.trial_pin_file(name).name}"
            )
            officer_specs.append(OfficerSpec(name, module_path, name, None, pin, uri))
        quorum = req.quorum or min(EMBEDDED_QUORUM, req.embedded_officers)
        km_ref = TokenRef(module_path, EMBEDDED_KM_TOKEN)
        km_pin_source = f"file:secrets/{home.trial_pin_file('km').name}"
        warnings.append(
            "embedded SoftHSM2 default: the KM and officer PINs are kept in the home for trials; "
            "use --module with a real HSM for production"
        )
    else:
        assert req.module is not None
        module_path = req.module
        module = Pkcs11Module.load(module_path)
        if req.km_pin is None:
            raise errors.SecretSourceError("--pin-source is needed with --module")
        if req.recovery_token_label:
            warnings.append("--recovery-token is deprecated and ignored: archive keys are split among the officers")
        if not req.officers:
            raise errors.BadInput("name the recovery officers with --officer NAME=URI")
        km_pin = req.km_pin
        officer_specs = req.officers
        quorum = req.quorum or min(2, len(officer_specs))
        km_ref = TokenRef(module_path, req.km_token_label or EMBEDDED_KM_TOKEN)
        km_pin_source = req.km_pin_source or "prompt"

    names = [o.name for o in officer_specs]
    if len(set(names)) != len(names):
        raise errors.BadInput("officer names must be unique")
    if not 1 <= quorum <= len(officer_specs):
        raise errors.PolicyViolation(f"quorum {quorum} must be between 1 and the {len(officer_specs)} officers")
    if quorum < 2:
        warnings.append("a quorum of 1 lets a single officer recover keys")

    # --- the KM token ---------------------------------------------------------------------
    km = module.open_token(km_pin, label=km_ref.label)
    for label, cls in (
        (CA_KEY_LABEL, ObjectClass.PRIVATE_KEY),
        (AUDIT_KEY_LABEL, ObjectClass.SECRET_KEY),
        (ARCHIVE_KEY_PREFIX + "1", ObjectClass.SECRET_KEY),
    ):
        if km.has_object(label, cls):
            raise errors.AlreadyExists(f"token '{km.label}' already holds '{label}'; refusing to overwrite it")
    ca_key = km.generate_keypair(req.ca_key_alg, CA_KEY_LABEL, b"hsmkm-ca", sign=True, decrypt=False)
    undo.add(lambda: _destroy_pair(km, CA_KEY_LABEL))
    km.generate_aes_key(ARCHIVE_KEY_PREFIX + "1")
    undo.add(lambda: km.destroy(ARCHIVE_KEY_PREFIX + "1", ObjectClass.SECRET_KEY))
    audit_key = km.generate_hmac_key(AUDIT_KEY_LABEL)
    undo.add(lambda: km.destroy(AUDIT_KEY_LABEL, ObjectClass.SECRET_KEY))

    # --- the officers: one person, one officer, each on a token of its own ---------------------
    officer_keys = []
    signing_keys = []
    officer_tokens: list[tuple[str, str, str]] = []
    for spec in officer_specs:
        omod = Pkcs11Module.load(spec.module)
        ots = omod.open_token(spec.pin, label=spec.label, serial=spec.serial)
        check_officer_token(ots.serial, ots.label, ots.has_object(OFFICER_KEY_LABEL), km.serial, None,
                            [t[1] for t in officer_tokens], spec.name)
        okey = ots.generate_keypair(
            OFFICER_KEY_ALG, OFFICER_KEY_LABEL, b"hsmkm-officer", sign=True, decrypt=False, derive=True
        )
        undo.add(functools.partial(_destroy_pair, ots, OFFICER_KEY_LABEL))
        officer_keys.append((spec.name, spec.uri, okey.public_key()))
        signing_keys.append(okey)
        officer_tokens.append((spec.name, ots.serial, ots.label))
    # Each officer attests the first officer set on their own token: later approvals check the
    # set they work with descends from one they attested.
    statement = officer_side.epoch_statement(
        1, quorum, [(n, x, custody.public_der(p)) for x, (n, _, p) in enumerate(officer_keys, start=1)])
    attestations = [(n, officer_side.attest(k, statement)) for (n, _, _), k in zip(officer_keys, signing_keys)]

    # --- the CA certificate ----------------------------------------------------------------
    now = clock()
    csr_path = cert_path = None
    ca_cert: x509.Certificate | None = None
    if req.csr:
        csr = profiles.build_ca_csr(req.ca_subject, ca_key)
        csr_file = req.root / "ca.csr"
        write_atomic(csr_file, csr.public_bytes(serialization.Encoding.PEM))
        csr_path = str(csr_file)
    else:
        ca_cert = profiles.build_ca_certificate(
            subject=req.ca_subject,
            public_key=ca_key.public_key(),
            ca_key=ca_key,
            serial=profiles.random_serial(),
            not_before=now,
            not_after=now + timedelta(days=req.ca_days),
        )
        write_atomic(home.ca_cert, ca_cert.public_bytes(serialization.Encoding.DER))
        cert_path = str(home.ca_cert)

    # --- the database and the configuration -------------------------------------------------
    db = Database.create(home.database)
    try:
        with db.write() as tx:
            tx.meta.set("archive_key_label", ARCHIVE_KEY_PREFIX + "1")
            first = epochs.create(tx, quorum, [(n, p) for n, _, p in officer_keys], epochs.EpochStatus.ACTIVE)
            custody.store_split(tx, officer_keys, {n: b"" for n, _, _ in officer_keys}, first.number, quorum, now)
            for officer, serial, label in officer_tokens:
                tx.officers.set_token(officer, serial, label)
            if epochs.statement(first) != statement:
                raise errors.BadInput("the officer set stored is not the one attested")
            for name, sig in attestations:
                epochs.record_attestation(tx, first.number, name, sig)
            if ca_cert is not None:
                from hsmkm.km.authority import record_certificate

                record_certificate(tx, ca_cert, CA_KIND, None, now)
            log = AuditLog(tx, audit_key.hmac_sha256, clock)
            log.append(
                "operator",
                AuditAction.INIT,
                {
                    "ca_subject": req.ca_subject.rfc4514_string(),
                    "ca_key": req.ca_key_alg.value,
                    "km_token": km_ref.label,
                    "officers": names,
                    "quorum": quorum,
                    "embedded": embedded,
                    "subordinate": req.csr,
                },
            )
    finally:
        db.close()
    if log.appended is not None:  # the INIT entry: the token's first anchor
        TokenAnchor(km, audit_key.hmac_sha256, anchor_lock(home)).start(log.appended)
    config = KmConfig(
        km_token=km_ref,
        recovery_token=None,
        ca_key_alg=req.ca_key_alg,
        user_key_alg=req.user_key_alg,
        cert_days=req.cert_days,
        base_url=req.base_url if req.base_url.endswith("/") else req.base_url + "/",
        embedded=embedded,
        softhsm_config=softhsm_config,
        km_pin_source=km_pin_source,
        subordinate=req.csr,
    )
    config.save(home)
    for sub in (home.crl_dir, home.certs_dir):
        sub.mkdir(parents=True, exist_ok=True)
    os.chmod(req.root, 0o700)
    return InitResult(
        home=req.root,
        embedded=embedded,
        ca_subject=req.ca_subject.rfc4514_string(),
        ca_key_alg=req.ca_key_alg.value,
        officers=names,
        quorum=quorum,
        csr_path=csr_path,
        ca_cert_path=cert_path,
        warnings=warnings,
    )


def check_officer_token(
    serial: str, label: str, holds_officer_key: bool, km_serial: str, recovery: tuple[str | None, str | None] | None,
    other_serials: list[str], name: str,
) -> None:
    """One person, one officer: an officer's token is none of the KM's and no other officer's."""
    if serial == km_serial:
        raise errors.PolicyViolation(f"{name}'s token is the KM token; an officer key must be on a token of its own")
    if recovery is not None and (serial == recovery[0] or (recovery[0] is None and label == recovery[1])):
        raise errors.PolicyViolation(f"{name}'s token is the recovery token; an officer key must be on a token of its own")
    if serial in other_serials:
        raise errors.PolicyViolation(f"{name}'s token (serial {serial}) already holds another officer's key")
    if holds_officer_key:
        raise errors.PolicyViolation(
            f"{name}'s token '{label}' already holds an officer key; one person, one officer: use a token of its own"
        )


def _destroy_pair(ts: TokenSession, label: str) -> None:
    ts.destroy(label, ObjectClass.PRIVATE_KEY)
    ts.destroy(label, ObjectClass.PUBLIC_KEY)
