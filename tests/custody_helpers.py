"""In-process officers for the recovery tests: approvals made on the trial officers' real tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import trial_pin
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.km import recovery
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for


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


def complete_in_child(home: str, request_id: int, claimed: Any, go: Any, results: Any) -> None:
    """A completion in a process of its own (its own database connection and token login),
    pausing right after it claimed the request until ``go`` is set."""
    from hsmkm import errors

    km = KeyManager.open(Path(home), trial_pin(Path(home), "km"), publisher=publisher_for(Path(home)))

    def pause() -> None:
        claimed.set()
        go.wait(120)

    try:
        done = recovery.complete_recovery(km, request_id, None, False, after_claim=pause)
        results.put((request_id, "completed", len(done.keys)))
    except errors.HsmkmError as exc:
        results.put((request_id, "refused", str(exc)))
