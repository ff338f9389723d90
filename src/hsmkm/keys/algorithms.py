"""Key algorithms hsmkm makes and accepts, and the one table of algorithm facts: per key the
digest, the signature AlgorithmIdentifier and the micalg; digest, cipher and ECDH OIDs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsmkm import errors
from hsmkm.der import der_oid, seq


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
        return self.digest.hash()

    @property
    def digest(self) -> Digest:
        """The digest hsmkm uses with such a key (as digest_for_key)."""
        return Digest.SHA384 if self is KeyAlgorithm.P384 else Digest.SHA256

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


# --- the algorithm table: digests, signature schemes, ciphers ---------------------------------


class Digest(str, Enum):
    """A message digest; the values are the names hashlib, cryptography and asn1crypto use."""

    SHA1 = "sha1"
    SHA224 = "sha224"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def oid(self) -> str:
        return _DIGEST_OIDS[self]

    @property
    def algorithm_identifier(self) -> bytes:
        """The DER AlgorithmIdentifier, parameters absent (RFC 5754 §2)."""
        return seq(der_oid(self.oid))

    @property
    def hash_class(self) -> type[hashes.HashAlgorithm]:
        return _HASH_CLASSES[self]

    def hash(self) -> hashes.HashAlgorithm:
        """A fresh cryptography hash object."""
        return _HASH_CLASSES[self]()

    def builder_hash(self) -> hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
        """The hash for cryptography's certificate and CSR builders, which take no SHA-1."""
        h = self.hash()
        if isinstance(h, (hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)):
            return h
        raise errors.UnsupportedAlgorithm(f"{self.value} signatures on certificates or requests")

    @property
    def size(self) -> int:
        return self.hash_class.digest_size  # type: ignore[return-value]

    @property
    def block_size(self) -> int:
        """The compression function's input block in octets (the RFC 7292 KDF's v)."""
        return self.hash_class.block_size  # type: ignore[return-value]

    @property
    def micalg(self) -> str:
        """The multipart/signed micalg parameter (RFC 8551 §3.5.3.2)."""
        return "sha-" + self.value[3:]

    @property
    def digest_info_prefix(self) -> bytes:
        """The DER DigestInfo (PKCS#1 v1.5 signatures, RFC 8017 §9.2) up to the digest itself."""
        alg = seq(der_oid(self.oid), b"\x05\x00")
        return bytes([0x30, len(alg) + 2 + self.size]) + alg + bytes([0x04, self.size])

    @classmethod
    def named(cls, name: object) -> Digest | None:
        """The digest of a hashlib/asn1crypto name, None for one hsmkm does not know."""
        try:
            return cls(name)
        except ValueError:
            return None

    @classmethod
    def of_oid(cls, oid: str) -> Digest | None:
        return _DIGEST_BY_OID.get(oid)


_DIGEST_OIDS = {
    Digest.SHA1: "1.3.14.3.2.26",
    Digest.SHA224: "2.16.840.1.101.3.4.2.4",
    Digest.SHA256: "2.16.840.1.101.3.4.2.1",
    Digest.SHA384: "2.16.840.1.101.3.4.2.2",
    Digest.SHA512: "2.16.840.1.101.3.4.2.3",
}
_DIGEST_BY_OID = {oid: d for d, oid in _DIGEST_OIDS.items()}
_HASH_CLASSES: dict[Digest, type[hashes.HashAlgorithm]] = {
    Digest.SHA1: hashes.SHA1,
    Digest.SHA224: hashes.SHA224,
    Digest.SHA256: hashes.SHA256,
    Digest.SHA384: hashes.SHA384,
    Digest.SHA512: hashes.SHA512,
}


class KeyKind(str, Enum):
    """The family of a signing or key-agreement key."""

    RSA = "rsa"
    EC = "ec"


def key_kind(key: object) -> KeyKind:
    """RSA or EC, of a public or private key; other key types are refused."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return KeyKind.RSA
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return KeyKind.EC
    raise errors.UnsupportedAlgorithm(f"key type {type(key).__name__} is not supported (RSA or EC)")


def digest_for_key(key: object) -> Digest:
    """The digest hsmkm uses with this key, public or private: SHA-384 for P-384 (and larger
    curves), SHA-256 for RSA and P-256. Signatures, CSRs, CRLs, micalg and the ECDH KDF of a
    recipient's key all follow it."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and key.curve.key_size >= 384:
        return Digest.SHA384
    return Digest.SHA256


_SIGNATURE_OIDS: dict[tuple[KeyKind, Digest], str] = {
    (KeyKind.RSA, Digest.SHA1): "1.2.840.113549.1.1.5",
    (KeyKind.RSA, Digest.SHA224): "1.2.840.113549.1.1.14",
    (KeyKind.RSA, Digest.SHA256): "1.2.840.113549.1.1.11",
    (KeyKind.RSA, Digest.SHA384): "1.2.840.113549.1.1.12",
    (KeyKind.RSA, Digest.SHA512): "1.2.840.113549.1.1.13",
    (KeyKind.EC, Digest.SHA1): "1.2.840.10045.4.1",
    (KeyKind.EC, Digest.SHA224): "1.2.840.10045.4.3.1",
    (KeyKind.EC, Digest.SHA256): "1.2.840.10045.4.3.2",
    (KeyKind.EC, Digest.SHA384): "1.2.840.10045.4.3.3",
    (KeyKind.EC, Digest.SHA512): "1.2.840.10045.4.3.4",
}


@dataclass(frozen=True)
class SignatureScheme:
    """A signature: PKCS#1 v1.5 with RSA keys, ECDSA with EC keys, over ``digest``."""

    kind: KeyKind
    digest: Digest

    @property
    def oid(self) -> str:
        return _SIGNATURE_OIDS[(self.kind, self.digest)]

    @property
    def algorithm_identifier(self) -> bytes:
        """The DER AlgorithmIdentifier: NULL parameters for RSA (RFC 4055 §5), absent for
        ECDSA (RFC 5758 §3.2)."""
        if self.kind is KeyKind.RSA:
            return seq(der_oid(self.oid), b"\x05\x00")
        return seq(der_oid(self.oid))

    def sign(self, key: object, data: bytes) -> bytes:
        if self.kind is KeyKind.RSA and isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), self.digest.hash())
        if self.kind is KeyKind.EC and isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(self.digest.hash()))
        raise errors.UnsupportedAlgorithm(f"a {self.kind.value} signature with a {type(key).__name__}")

    def verify(self, public: object, signature: bytes, data: bytes) -> None:
        """Raises cryptography's InvalidSignature when ``signature`` does not verify."""
        if self.kind is KeyKind.RSA and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), self.digest.hash())
        elif self.kind is KeyKind.EC and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(self.digest.hash()))
        else:
            raise errors.UnsupportedAlgorithm(f"a {self.kind.value} signature with a {type(public).__name__}")


def signature_scheme(key: object) -> SignatureScheme:
    """How hsmkm signs with this key (its kind, with digest_for_key)."""
    return SignatureScheme(key_kind(key), digest_for_key(key))


# Content-encryption and key-wrap OIDs by AES key size in octets (RFC 3565, RFC 5084).
AES_CBC_OIDS = {16: "2.16.840.1.101.3.4.1.2", 24: "2.16.840.1.101.3.4.1.22", 32: "2.16.840.1.101.3.4.1.42"}
AES_GCM_OIDS = {16: "2.16.840.1.101.3.4.1.6", 24: "2.16.840.1.101.3.4.1.26", 32: "2.16.840.1.101.3.4.1.46"}
AES_WRAP_OIDS = {16: "2.16.840.1.101.3.4.1.5", 24: "2.16.840.1.101.3.4.1.25", 32: "2.16.840.1.101.3.4.1.45"}
RSA_ENCRYPTION_OID = "1.2.840.113549.1.1.1"
RSA_OAEP_OID = "1.2.840.113549.1.1.7"
MGF1_OID = "1.2.840.113549.1.1.8"
EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1"

# ECDH key-agreement schemes (RFC 5753 §7.1.4) by their KDF digest: dhSinglePass-stdDH and
# -cofactorDH, the same on prime curves, whose cofactor is 1.
ECDH_STD_SCHEMES = {
    Digest.SHA1: "1.3.133.16.840.63.0.2",
    Digest.SHA224: "1.3.132.1.11.0",
    Digest.SHA256: "1.3.132.1.11.1",
    Digest.SHA384: "1.3.132.1.11.2",
    Digest.SHA512: "1.3.132.1.11.3",
}
ECDH_COFACTOR_SCHEMES = {
    Digest.SHA1: "1.3.133.16.840.63.0.3",
    Digest.SHA224: "1.3.132.1.14.0",
    Digest.SHA256: "1.3.132.1.14.1",
    Digest.SHA384: "1.3.132.1.14.2",
    Digest.SHA512: "1.3.132.1.14.3",
}
ECDH_KDF_DIGESTS = {oid: d for table in (ECDH_STD_SCHEMES, ECDH_COFACTOR_SCHEMES) for d, oid in table.items()}
