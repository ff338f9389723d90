"""Officers' tokens as the KM reaches them: open one from its RFC 7512 URI, and make an
officer key on a new officer's token (one person, one officer)."""

from __future__ import annotations

from hsmkm import errors, keys
from hsmkm.keys.token import Token
from hsmkm.keys.uri import Pkcs11Uri
from hsmkm.km import custody, epochs
from hsmkm.km.config import OFFICER_KEY_LABEL
from hsmkm.km.manager import KeyManager
from hsmkm.km.officer_policy import OFFICER_KEY_ALG, check_officer_token


def pin_source(km: KeyManager, uri_text: str) -> str | None:
    """The PIN source the officer's URI names, as this home means it (``file:`` relative to it)."""
    return km.config.resolve_source(Pkcs11Uri.parse(uri_text).pin_source)


def open_officer_token(km: KeyManager, uri_text: str, pin: str) -> Token:
    """The officer's token: in the URI's module, else the KM's (with the KM's SoftHSM2 config)."""
    uri = Pkcs11Uri.parse(uri_text)
    module = uri.module_path or km.config.km_token.module
    config = km.config.softhsm_config if module == km.config.km_token.module else None
    return keys.open_token(uri, pin, module_path=module, softhsm_config=config)


def make_officer_key(km: KeyManager, name: str, session: Token, other_serials: list[str]) -> dict[str, str]:
    """A new officer's key pair on their own token (none of the KM's, no other officer's, not
    a key another officer already has); the parameters its change request records."""
    rec = km.config.recovery_token
    check_officer_token(
        session.serial,
        session.label,
        session.has_object(OFFICER_KEY_LABEL),
        km.session.serial,
        (rec.serial, rec.label) if rec is not None else None,
        other_serials,
        name,
    )
    key = session.generate_keypair(
        OFFICER_KEY_ALG,
        OFFICER_KEY_LABEL,
        b"hsmkm-officer",
        sign=True,
        decrypt=False,
        derive=True,
    )
    pub = custody.public_der(key.public_key())
    with km.db.read() as tx:
        current = epochs.active(tx).officers
    if any(custody.public_der(o.public_key) == pub for o in current):
        raise errors.PolicyViolation(f"{name}'s key is already another officer's key")
    return {
        "public_key": pub.hex(),
        "token_serial": session.serial,
        "token_label": session.label,
    }
