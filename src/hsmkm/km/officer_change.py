"""The checks before an officer-set change (add, remove, quorum) is opened or carried out."""

from __future__ import annotations

from typing import Any

from hsmkm import errors
from hsmkm.km import custody, recovery
from hsmkm.km.manager import KeyManager

# What an officer-add request fixes when it is opened (the key made on the token), not given again.
_FIXED = ("public_key", "token_serial", "token_label")


def approved_change(
    km: KeyManager, kind: recovery.RequestKind, request_id: int, params: dict[str, Any]
) -> dict[str, str]:
    """Refuse a request approved for something else; the token URI of each officer of the
    new set (the current officers, and the one being added)."""
    req = recovery.get(km, request_id)
    if req.kind is not kind or {k: req.params.get(k) for k in params if k not in _FIXED} != {
        k: v for k, v in params.items() if k not in _FIXED
    }:
        raise errors.PolicyViolation(f"request {request_id} was approved for something else")
    with km.db.read() as tx:
        registered = {o.name: o.uri for o in custody.active_officers(tx)}
    if req.kind is recovery.RequestKind.OFFICER_ADD:
        registered[str(req.params["name"])] = str(req.params["uri"])
    return registered


def check_new_officer(km: KeyManager, name: str) -> None:
    with km.db.read() as tx:
        taken = {o.name for o in custody.active_officers(tx)}
    if name in taken:
        raise errors.AlreadyExists(f"{name} is already an officer")


def check_quorum(km: KeyManager, quorum: int) -> None:
    """A quorum of at most the officers there are."""
    with km.db.read() as tx:
        n = len(custody.active_officers(tx))
    if quorum > n:
        raise errors.PolicyViolation(f"quorum {quorum} is more than the {n} officers")
