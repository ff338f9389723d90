"""One person, one officer: the rule for officers' tokens, and the officer key's algorithm."""

from __future__ import annotations

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm

OFFICER_KEY_ALG = KeyAlgorithm.P256


def check_officer_token(
    serial: str,
    label: str,
    holds_officer_key: bool,
    km_serial: str,
    recovery: tuple[str | None, str | None] | None,
    other_serials: list[str],
    name: str,
) -> None:
    """One person, one officer: an officer's token is none of the KM's and no other officer's."""
    if serial == km_serial:
        raise errors.PolicyViolation(f"{name}'s token is the KM token; an officer key must be on a token of its own")
    if recovery is not None and (serial == recovery[0] or (recovery[0] is None and label == recovery[1])):
        raise errors.PolicyViolation(
            f"{name}'s token is the recovery token; an officer key must be on a token of its own"
        )
    if serial in other_serials:
        raise errors.PolicyViolation(f"{name}'s token (serial {serial}) already holds another officer's key")
    if holds_officer_key:
        raise errors.PolicyViolation(
            f"{name}'s token '{label}' already holds an officer key; one person, one officer: use a token of its own"
        )
