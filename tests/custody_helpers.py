"""In-process officers for the recovery tests: approvals made on the trial officers' real tokens."""

from __future__ import annotations

from pathlib import Path

from conftest import trial_pin
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.km import recovery
from hsmkm.km.manager import KeyManager


def officer_key(km: KeyManager, home: Path, name: str) -> PrivateKey:
    module = Pkcs11Module.load(km.config.km_token.module, km.config.softhsm_config)
    return module.open_token(trial_pin(home, name), label=name).private_key(label="hsmkm-officer")


def approve(km: KeyManager, home: Path, request_id: int, *names: str) -> int:
    """Each named officer looks at the request (rebuilt from the rows) and approves it."""
    count = 0
    for name in names:
        shown = recovery.content_for_officer(km, request_id)
        count = recovery.approve(km, request_id, name, officer_key(km, home, name), shown)
    return count
