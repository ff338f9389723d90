"""``hsmkm init``: the key ceremony.

On the KM token: the CA key, the archive master key and the audit MAC key. On the recovery
token: the recovery key pair; its PIN is then replaced by a random one that is split among
the officers and forgotten. Each officer's token gets an officer key pair. Then the CA
certificate (or a CSR for a subordinate CA) and the database. Any failure undoes what was
made, so a failed init leaves no KM behind.
"""

from __future__ import annotations

import base64
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
from hsmkm.keys.pkcs11 import Pkcs11Module, TokenPrivateKey, TokenSession
from hsmkm.keys.softhsm import find_softhsm_module, init_token, write_store_config
from hsmkm.km import custody
from hsmkm.km.anchor import TokenAnchor, anchor_lock
from hsmkm.km.audit import AuditAction, AuditLog
from hsmkm.km.config import (
    ARCHIVE_KEY_PREFIX,
    AUDIT_KEY_LABEL,
    CA_KEY_LABEL,
    EMBEDDED_KM_TOKEN,
    EMBEDDED_RECOVERY_TOKEN,
    OFFICER_KEY_LABEL,
    RECOVERY_KEY_LABEL,
    Home,
    KmConfig,
    TokenRef,
)
from hsmkm.secrets import write_secret_file
from hsmkm.store.db import Database
from hsmkm.x509 import profiles

EMBEDDED_OFFICERS = ("officer1", "officer2", "officer3")
EMBEDDED_QUORUM = 2
OFFICER_KEY_ALG = KeyAlgorithm.P256
RECOVERY_KEY_ALG = KeyAlgorithm.RSA3072


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
        recovery_pin = custody.random_pin()
        init_token(module, EMBEDDED_KM_TOKEN, custody.random_pin(), km_pin)
        init_token(module, EMBEDDED_RECOVERY_TOKEN, custody.random_pin(), recovery_pin)
        write_secret_file(home.trial_pin_file("km"), km_pin)
        officer_specs = []
        for name in EMBEDDED_OFFICERS:
            pin = custody.random_pin(16)
            init_token(module, name, custody.random_pin(), pin)
            write_secret_file(home.trial_pin_file(name), pin)
            uri = (
                f"pkcs11:token={name}?module-path={module_path}"
                f"&pin-source=file:{home.trial_pin_file(name)}"
            )
            officer_specs.append(OfficerSpec(name, module_path, name, None, pin, uri))
        quorum = req.quorum or EMBEDDED_QUORUM
        km_ref = TokenRef(module_path, EMBEDDED_KM_TOKEN)
        rec_ref = TokenRef(module_path, EMBEDDED_RECOVERY_TOKEN)
        km_pin_source = f"file:{home.trial_pin_file('km')}"
        warnings.append(
            "embedded SoftHSM2 default: the KM and officer PINs are kept in the home for trials; "
            "use --module with a real HSM for production"
        )
    else:
        assert req.module is not None
        module_path = req.module
        module = Pkcs11Module.load(module_path)
        if req.km_pin is None or req.recovery_pin is None:
            raise errors.SecretSourceError("--pin-source and --recovery-pin-source are needed with --module")
        if not req.recovery_token_label:
            raise errors.BadInput("--recovery-token is needed with --module")
        if not req.officers:
            raise errors.BadInput("name the recovery officers with --officer NAME=URI")
        km_pin, recovery_pin = req.km_pin, req.recovery_pin
        officer_specs = req.officers
        quorum = req.quorum or min(2, len(officer_specs))
        km_ref = TokenRef(module_path, req.km_token_label or EMBEDDED_KM_TOKEN)
        rec_ref = TokenRef(module_path, req.recovery_token_label)
        km_pin_source = req.km_pin_source or "prompt"

    names = [o.name for o in officer_specs]
    if len(set(names)) != len(names):
        raise errors.BadInput("officer names must be unique")
    if not 1 <= quorum <= len(officer_specs):
        raise errors.PolicyViolation(f"quorum {quorum} must be between 1 and the {len(officer_specs)} officers")
    if quorum < 2:
        warnings.append("a quorum of 1 lets a single officer recover keys")
    if km_ref.label == rec_ref.label:
        raise errors.BadInput("the recovery token must be a different token from the KM token")

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

    # --- the recovery token ---------------------------------------------------------------
    rec = module.open_token(recovery_pin, label=rec_ref.label)
    if rec.has_object(RECOVERY_KEY_LABEL):
        raise errors.AlreadyExists(f"token '{rec.label}' already holds a recovery key")
    recovery_key = rec.generate_keypair(
        RECOVERY_KEY_ALG, RECOVERY_KEY_LABEL, b"hsmkm-recovery", sign=False, decrypt=True
    )
    undo.add(lambda: _destroy_pair(rec, RECOVERY_KEY_LABEL))
    recovery_public = recovery_key.public_key()
    if not embedded:
        # From here on nobody knows the recovery PIN: it exists only as the officers' shares.
        new_pin = custody.random_pin()
        rec.set_pin(recovery_pin, new_pin)
        recovery_pin = new_pin
    rec.close()

    # --- the officers ----------------------------------------------------------------------
    officer_keys = []
    for spec in officer_specs:
        omod = Pkcs11Module.load(spec.module)
        ots = omod.open_token(spec.pin, label=spec.label, serial=spec.serial)
        if ots.has_object(OFFICER_KEY_LABEL):
            okey: TokenPrivateKey = ots.private_key(label=OFFICER_KEY_LABEL)
        else:
            okey = ots.generate_keypair(
                OFFICER_KEY_ALG, OFFICER_KEY_LABEL, b"hsmkm-officer", sign=True, decrypt=False, derive=True
            )
            undo.add(functools.partial(_destroy_pair, ots, OFFICER_KEY_LABEL))
        officer_keys.append((spec.name, spec.uri, okey.public_key()))
    sealed = custody.split_and_seal(recovery_pin, [(n, p) for n, _, p in officer_keys], quorum, epoch=1)
    del recovery_pin

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
        with db.transaction() as conn:
            db.set_meta("recovery_public_key", base64.b64encode(custody.public_der(recovery_public)).decode())
            db.set_meta("archive_key_label", ARCHIVE_KEY_PREFIX + "1")
            custody.store_split(conn, officer_keys, sealed, 1, quorum, now)
            if ca_cert is not None:
                from hsmkm.km.authority import record_certificate

                record_certificate(conn, ca_cert, "ca", None, now)
            log = AuditLog(conn, audit_key.hmac_sha256, clock)
            log.append(
                "operator",
                AuditAction.INIT,
                {
                    "ca_subject": req.ca_subject.rfc4514_string(),
                    "ca_key": req.ca_key_alg.value,
                    "km_token": km_ref.label,
                    "recovery_token": rec_ref.label,
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
        recovery_token=rec_ref,
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


def _destroy_pair(ts: TokenSession, label: str) -> None:
    ts.destroy(label, ObjectClass.PRIVATE_KEY)
    ts.destroy(label, ObjectClass.PUBLIC_KEY)
