"""Key algorithms hsmkm makes and accepts, shared by both key backends."""

from __future__ import annotations

from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hsmkm import errors


class KeyAlgorithm(str, Enum):
    """A key type and size hsmkm generates: the values are the CLI's names."""

    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    P256 = "p256"
    P384 = "p384"

    @property
    def is_rsa(self) -> bool:
        return self in (KeyAlgorithm.RSA2048, KeyAlgorithm.RSA3072)

    @property
    def bits(self) -> int:
        return {"rsa2048": 2048, "rsa3072": 3072, "p256": 256, "p384": 384}[self.value]

    @property
    def curve_name(self) -> str:
        """The cryptography name of the curve (EC algorithms only)."""
        return self.curve.name

    @property
    def curve(self) -> ec.EllipticCurve:
        """The curve (EC algorithms only)."""
        if self is KeyAlgorithm.P256:
            return ec.SECP256R1()
        if self is KeyAlgorithm.P384:
            return ec.SECP384R1()
        raise ValueError(f"{self.value} is not an elliptic-curve algorithm")

    @property
    def signature_hash(self) -> hashes.HashAlgorithm:
        """The hash a signature by such a key uses (SHA-384 for P-384, else SHA-256)."""
        return hashes.SHA384() if self is KeyAlgorithm.P384 else hashes.SHA256()

    def generate(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        """A fresh software key."""
        if self.is_rsa:
            return rsa.generate_private_key(public_exponent=65537, key_size=self.bits)
        return ec.generate_private_key(self.curve)


def algorithm_of(public_key: object) -> KeyAlgorithm:
    """The KeyAlgorithm of a public (or private) key; unsupported ones are refused."""
    if isinstance(public_key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        bits = public_key.key_size
        if bits == 2048:
            return KeyAlgorithm.RSA2048
        if bits == 3072:
            return KeyAlgorithm.RSA3072
        raise errors.UnsupportedAlgorithm(f"RSA-{bits} keys are not supported (2048 or 3072)")
    if isinstance(public_key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        name = public_key.curve.name
        if name == "secp256r1":
            return KeyAlgorithm.P256
        if name == "secp384r1":
            return KeyAlgorithm.P384
        raise errors.UnsupportedAlgorithm(f"curve {name} is not supported (P-256 or P-384)")
    raise errors.UnsupportedAlgorithm(f"key type {type(public_key).__name__} is not supported")
