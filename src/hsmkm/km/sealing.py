"""Sealing small secrets (PIN shares) to a public key whose private half is on a token.

EC keys: ephemeral ECDH, HKDF-SHA256, AES-256-GCM. RSA keys: RSA-OAEP-SHA256 of a fresh
AES key, AES-256-GCM. Opening calls only the key interface, so the private key may be on
any token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmkm import errors
from hsmkm.keys.base import PrivateKey, PublicKey

_EC = 1
_RSA = 2
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _kdf(shared: bytes, context: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"hsmkm-seal-v1\x00" + context).derive(shared)


@dataclass(frozen=True)
class Ephemeral:
    """One ephemeral EC key and its encoded point, shared by several recipients of a record."""

    key: ec.EllipticCurvePrivateKey
    point: bytes


def new_ephemeral(curve: ec.EllipticCurve) -> Ephemeral:
    key = ec.generate_private_key(curve)
    return Ephemeral(
        key, key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def seal(public_key: PublicKey, plaintext: bytes, context: bytes, ephemeral: Ephemeral | None = None) -> bytes:
    """Encrypt ``plaintext`` to ``public_key``; ``context`` is bound in as associated data.

    One ``ephemeral`` EC key may serve several recipients of the same curve when each
    ``context`` names its recipient (the key derivation covers context and point)."""
    nonce = os.urandom(12)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if ephemeral is None or ephemeral.key.curve.name != public_key.curve.name:
            ephemeral = new_ephemeral(public_key.curve)
        eph, point = ephemeral.key, ephemeral.point
        key = _kdf(eph.exchange(ec.ECDH(), public_key), context + point)
        ct = AESGCM(key).encrypt(nonce, plaintext, context)
        return bytes([_EC]) + len(point).to_bytes(2, "big") + point + nonce + ct
    if isinstance(public_key, rsa.RSAPublicKey):
        key = AESGCM.generate_key(256)
        wrapped = public_key.encrypt(key, _OAEP)
        ct = AESGCM(key).encrypt(nonce, plaintext, context)
        return bytes([_RSA]) + len(wrapped).to_bytes(2, "big") + wrapped + nonce + ct
    raise errors.UnsupportedAlgorithm("sealing needs an RSA or EC public key")


def unseal(private_key: PrivateKey, blob: bytes, context: bytes) -> bytes:
    """Open what ``seal`` made for this key; any mismatch is SignatureInvalid."""
    try:
        kind = blob[0]
        n = int.from_bytes(blob[1:3], "big")
        head, nonce, ct = blob[3 : 3 + n], blob[3 + n : 15 + n], blob[15 + n :]
        if len(head) != n or len(nonce) != 12 or len(ct) < 16:
            raise ValueError
    except (IndexError, ValueError):
        raise errors.MalformedInput("sealed blob is malformed") from None
    try:
        if kind == _EC and isinstance(private_key, ec.EllipticCurvePrivateKey):
            peer = ec.EllipticCurvePublicKey.from_encoded_point(private_key.curve, head)
            key = _kdf(private_key.exchange(ec.ECDH(), peer), context + head)
        elif kind == _RSA and isinstance(private_key, rsa.RSAPrivateKey):
            key = private_key.decrypt(head, _OAEP)
        else:
            raise errors.MalformedInput("sealed blob is for another kind of key")
        return AESGCM(key).decrypt(nonce, ct, context)
    except errors.HsmkmError as exc:
        if isinstance(exc, errors.TokenError):
            raise
        raise errors.SignatureInvalid("sealed blob does not open with this key") from None
    except Exception:
        raise errors.SignatureInvalid("sealed blob does not open with this key") from None
