"""Token keys that look like cryptography keys: RSA and EC private keys, and secret keys."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NoReturn

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.mechanisms import GCMParams

from hsmkm import errors
from hsmkm.keys.algorithms import Digest
from hsmkm.keys.pkcs11.errmap import mapped_errors
from hsmkm.keys.pkcs11.oaep import digest_of, oaep_decode

if TYPE_CHECKING:
    from hsmkm.keys.pkcs11.session import TokenSession

_HASH_SIGN_MECH = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}
_PSS_MECH = {
    "sha256": (Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.SHA256, pkcs11.MGF.SHA256),
    "sha384": (Mechanism.SHA384_RSA_PKCS_PSS, Mechanism.SHA384, pkcs11.MGF.SHA384),
    "sha512": (Mechanism.SHA512_RSA_PKCS_PSS, Mechanism.SHA512, pkcs11.MGF.SHA512),
}


class TokenSecretKey:
    """A secret key on the token: AES-GCM encryption or HMAC, computed inside the token."""

    def __init__(self, ts: TokenSession, obj: Any) -> None:
        self._ts = ts
        self._obj = obj
        self.label: str = obj.label

    def encrypt_gcm(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce(12) ‖ ciphertext ‖ tag(16), computed on the token."""
        nonce = os.urandom(12)
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: AES-GCM encrypt"):
            ct = self._obj.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))
        return nonce + bytes(ct)

    def decrypt_gcm(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 12 + 16:
            raise errors.MalformedInput("sealed record too short")
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: AES-GCM decrypt"):
            return bytes(
                self._obj.decrypt(blob[12:], mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(blob[:12], aad))
            )

    def hmac_sha256(self, data: bytes) -> bytes:
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: HMAC"):
            return bytes(self._obj.sign(data, mechanism=Mechanism.SHA256_HMAC))

    def destroy(self) -> None:
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: destroying key"):
            self._obj.destroy()
        self._ts.module.changed()


class _StaysOnToken:
    """What every token key shares: a session and object on the token, and a private half
    that never leaves it."""

    def __init__(self, ts: TokenSession, obj: Any, public: Any) -> None:
        self._ts = ts
        self._obj = obj
        self._public = public
        self.label: str = obj.label
        self.key_id: bytes = bytes(obj[Attribute.ID] or b"")

    def private_numbers(self) -> NoReturn:
        raise errors.PolicyViolation(f"key '{self.label}' is on a token and cannot be exported")

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> NoReturn:
        raise errors.PolicyViolation(f"key '{self.label}' is on a token and cannot be exported")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Any:
        return self


class TokenRSAPrivateKey(_StaysOnToken, rsa.RSAPrivateKey):
    """An RSA private key on a token; cryptography's builders sign with it unchanged."""

    _public: rsa.RSAPublicKey

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        padding: AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        data = bytes(data)
        from cryptography.hazmat.primitives.asymmetric import padding as pad

        prehashed = isinstance(algorithm, utils.Prehashed)
        hash_name = (algorithm._algorithm if prehashed else algorithm).name
        what = f"{self._ts.what()}: RSA sign"
        with self._ts.lock, mapped_errors(what):
            if isinstance(padding, pad.PKCS1v15):
                if hash_name not in _HASH_SIGN_MECH:
                    raise errors.UnsupportedAlgorithm(f"RSA signature with {hash_name}")
                if prehashed:
                    prefix = Digest(hash_name).digest_info_prefix
                    return bytes(self._obj.sign(prefix + data, mechanism=Mechanism.RSA_PKCS))
                return bytes(self._obj.sign(data, mechanism=_HASH_SIGN_MECH[hash_name]))
            if isinstance(padding, pad.PSS) and hash_name in _PSS_MECH and not prehashed:
                mech, hmech, mgf = _PSS_MECH[hash_name]
                salt = padding._salt_length
                if not isinstance(salt, int):
                    salt = Digest(hash_name).size
                return bytes(self._obj.sign(data, mechanism=mech, mechanism_param=(hmech, mgf, salt)))
        raise errors.UnsupportedAlgorithm(f"RSA signature padding {padding.name} with {hash_name}")

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import padding as pad

        what = f"{self._ts.what()}: RSA decrypt"
        if isinstance(padding, pad.PKCS1v15):
            with self._ts.lock, mapped_errors(what):
                return bytes(self._obj.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS))
        if isinstance(padding, pad.OAEP):
            # SoftHSM2 (and many HSMs) do OAEP only with SHA-1; for other hashes take the raw
            # RSA result (CKM_RSA_X_509) and decode OAEP here (RFC 8017 §7.1.2).
            hash_alg = padding._algorithm
            mgf_alg = padding._mgf._algorithm
            label = padding._label or b""
            if hash_alg.name == "sha1" and mgf_alg.name == "sha1" and not label:
                with self._ts.lock, mapped_errors(what):
                    return bytes(self._obj.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP))
            k = (self.key_size + 7) // 8
            if len(ciphertext) != k:
                raise errors.SignatureInvalid("RSA-OAEP: ciphertext of wrong length")
            with self._ts.lock, mapped_errors(what):
                em = bytes(self._obj.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509))
            em = em.rjust(k, b"\x00")
            return oaep_decode(em, hash_alg, mgf_alg, label)
        raise errors.UnsupportedAlgorithm(f"RSA decryption padding {padding.name}")


class TokenECPrivateKey(_StaysOnToken, ec.EllipticCurvePrivateKey):
    """An EC private key on a token: ECDSA (hash in software, DER out) and ECDH."""

    _public: ec.EllipticCurvePublicKey

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        data = bytes(data)
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise errors.UnsupportedAlgorithm("EC signatures other than ECDSA")
        alg = signature_algorithm.algorithm
        digest = data if isinstance(alg, utils.Prehashed) else digest_of(alg.name, data)
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: ECDSA sign"):
            raw = bytes(self._obj.sign(digest, mechanism=Mechanism.ECDSA))
        half = len(raw) // 2
        return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH with the null KDF on the token; the shared secret comes back for the X9.63 KDF."""
        point = peer_public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        size = (self.key_size + 7) // 8
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: ECDH"):
            secret = self._obj.derive_key(
                KeyType.GENERIC_SECRET,
                size * 8,
                store=False,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(pkcs11.KDF.NULL, None, point),
                template={
                    Attribute.SENSITIVE: False,
                    Attribute.EXTRACTABLE: True,
                    Attribute.TOKEN: False,
                },
            )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                secret.destroy()


TokenPrivateKey = TokenRSAPrivateKey | TokenECPrivateKey
