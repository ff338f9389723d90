"""The PKCS#12 codec under the .epf keystore (RFC 7292): the appendix B KDF, PBES2 and the
legacy PBEs, bag attributes, and the checks that keep a file's own iteration counts bounded."""

from __future__ import annotations

import hashlib
import hmac
import os

from asn1crypto import algos, cms, core, keys, pkcs12
from asn1crypto import x509 as asn1x509
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from hsmkm import errors
from hsmkm.keys.algorithms import Digest
from hsmkm.keys.base import PrivateKey

OWASP_PBKDF2_SHA256_ITERATIONS = 600_000
# A file may ask for any count; past this it is a denial of service, not protection.
MAX_ITERATIONS = 10_000_000
# The legacy PBEs run the RFC 7292 KDF here (in Python) to look inside before OpenSSL reads the
# file; their files use 2,048.
MAX_LEGACY_ITERATIONS = 1_000_000

# hash name -> (constructor, u = digest bytes, v = block bytes) for the RFC 7292 KDF
_KDF_HASHES = {
    "sha1": (hashlib.sha1, 20, 64),
    "sha256": (hashlib.sha256, 32, 64),
    "sha384": (hashlib.sha384, 48, 128),
    "sha512": (hashlib.sha512, 64, 128),
}
# The PBKDF2 PRFs read (HMAC with these digests of the algorithm table).
_PBKDF2_PRFS = frozenset({Digest.SHA1, Digest.SHA256, Digest.SHA384, Digest.SHA512})
_AES_KEY_SIZES = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    AttributeError,
    RecursionError,
    crypto_exceptions.UnsupportedAlgorithm,
    *errors.CERTIFICATE_ERRORS,
)
# legacy PBE -> (key octets, cipher, block octets); RC4 has no IV
_LEGACY_CIPHERS = {
    "pkcs12_sha1_tripledes_3key": (24, "3des", 8),
    "pkcs12_sha1_tripledes_2key": (16, "3des", 8),
    "pkcs12_sha1_rc2_128": (16, "rc2", 8),
    "pkcs12_sha1_rc2_40": (5, "rc2", 8),
    "pkcs12_sha1_rc4_128": (16, "rc4", 0),
    "pkcs12_sha1_rc4_40": (5, "rc4", 0),
}

MAC_KEY_ID = 3  # RFC 7292 B.3: the ID byte for MAC keys


class _LegacyPbe(Exception):
    """A pre-PBES2 PKCS#12 encryption: hand the file to cryptography's loader."""


def _bmp_password(password: str) -> bytes:
    """The password as RFC 7292 wants it for the KDF: big-endian UTF-16 with a NUL terminator."""
    return password.encode("utf-16-be") + b"\x00\x00"


def _pkcs12_kdf(
    password: str | bytes, salt: bytes, iterations: int, purpose: int, size: int, hash_name: str = "sha256"
) -> bytes:
    """RFC 7292 appendix B.2; ``password`` as str is BMP-encoded, as bytes it is taken as is."""
    new, _, v = _KDF_HASHES[hash_name]
    pw = _bmp_password(password) if isinstance(password, str) else password
    d = bytes([purpose]) * v

    def fill(data: bytes) -> bytes:
        if not data:
            return b""
        n = v * ((len(data) + v - 1) // v)
        return (data * (n // len(data) + 1))[:n]

    i = bytearray(fill(salt) + fill(pw))
    out = b""
    while len(out) < size:
        a = new(d + bytes(i)).digest()
        for _ in range(iterations - 1):
            a = new(a).digest()
        out += a
        b = int.from_bytes(fill(a), "big") + 1
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j : j + v], "big") + b) % (1 << (8 * v))
            i[j : j + v] = block.to_bytes(v, "big")
    return out[:size]


def _check_iterations(count: int, what: str, cap: int = MAX_ITERATIONS) -> int:
    if not isinstance(count, int) or not 1 <= count <= cap:
        raise errors.MalformedInput(f".epf: implausible {what} iteration count {count}")
    return count


def _pbkdf2(password: str, salt: bytes, iterations: int, prf: str = "sha256", length: int = 32) -> bytes:
    digest = Digest.named(prf)
    if digest is None or digest not in _PBKDF2_PRFS:
        raise errors.UnsupportedAlgorithm(f".epf: PBKDF2 with {prf}")
    return PBKDF2HMAC(digest.hash(), length, salt, iterations).derive(password.encode("utf-8"))


def _aes_cbc(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    if encrypt:
        padder = padding.PKCS7(128).padder()
        enc = cipher.encryptor()
        return enc.update(padder.update(data) + padder.finalize()) + enc.finalize()
    dec = cipher.decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(dec.update(data) + dec.finalize()) + unpadder.finalize()


class _Pbes2:
    """PBES2 with one derived key per file save (one salt), a fresh IV per bag."""

    def __init__(self, password: str, iterations: int) -> None:
        self.salt = os.urandom(16)
        self.iterations = iterations
        self.key = _pbkdf2(password, self.salt, iterations)

    def encrypt(self, data: bytes) -> tuple[algos.EncryptionAlgorithm, bytes]:
        iv = os.urandom(16)
        alg = algos.EncryptionAlgorithm(
            {
                "algorithm": "pbes2",
                "parameters": {
                    "key_derivation_func": {
                        "algorithm": "pbkdf2",
                        "parameters": {
                            "salt": algos.Pbkdf2Salt(name="specified", value=self.salt),
                            "iteration_count": self.iterations,
                            "prf": {"algorithm": "sha256", "parameters": core.Null()},
                        },
                    },
                    "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
                },
            }
        )
        return alg, _aes_cbc(self.key, iv, data, encrypt=True)


_KeyCache = dict[tuple[bytes, int, str, int], bytes]


def _pbes2_decrypt(alg: algos.EncryptionAlgorithm, data: bytes, password: str, cache: _KeyCache) -> bytes:
    name = alg["algorithm"].native
    if name.startswith("pkcs12_sha1_"):
        raise _LegacyPbe(name)
    if name != "pbes2":
        raise errors.UnsupportedAlgorithm(f".epf: encryption {name} is not supported (re-export with PBES2/AES)")
    params = alg["parameters"]
    kdf = params["key_derivation_func"]
    if kdf["algorithm"].native != "pbkdf2":
        raise errors.UnsupportedAlgorithm(f".epf: key derivation {kdf['algorithm'].native}")
    kp = kdf["parameters"]
    scheme = params["encryption_scheme"]
    cipher_name = scheme["algorithm"].native
    if cipher_name not in _AES_KEY_SIZES:
        raise errors.UnsupportedAlgorithm(f".epf: cipher {cipher_name}")
    salt = kp["salt"].native
    iterations = _check_iterations(kp["iteration_count"].native, "PBKDF2")
    prf = kp["prf"]["algorithm"].native
    ck = (salt, iterations, prf, _AES_KEY_SIZES[cipher_name])
    if ck not in cache:
        cache[ck] = _pbkdf2(password, salt, iterations, prf, _AES_KEY_SIZES[cipher_name])
    try:
        return _aes_cbc(cache[ck], scheme["parameters"].native, data, encrypt=False)
    except ValueError:
        # the MAC verified, so this is a file whose parts use different passwords, or damage
        raise errors.WrongPassword(".epf: wrong password or corrupted file") from None


def _legacy_decrypt(alg: algos.EncryptionAlgorithm, data: bytes, password: str) -> bytes | None:
    """A legacy-PBE (RFC 7292 appendix C) encryption undone, its iteration count checked first;
    None for a cipher only OpenSSL runs."""
    from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit

    name = alg["algorithm"].native
    if name not in _LEGACY_CIPHERS:
        raise errors.UnsupportedAlgorithm(f".epf: encryption {name} is not supported")
    key_size, cipher_name, block = _LEGACY_CIPHERS[name]
    params = alg["parameters"]
    salt = params["salt"].native
    iterations = _check_iterations(params["iterations"].native, "legacy PBE", MAX_LEGACY_ITERATIONS)
    key = _pkcs12_kdf(password, salt, iterations, 1, key_size, "sha1")
    if cipher_name == "rc4":
        dec = Cipher(decrepit.ARC4(key), mode=None).decryptor()
        return dec.update(data) + dec.finalize()
    if cipher_name == "rc2" and key_size != 16:
        return None  # cryptography runs RC2 with 128-bit keys only; openssl -legacy puts certificates here
    iv = _pkcs12_kdf(password, salt, iterations, 2, block, "sha1")
    algorithm = decrepit.TripleDES(key) if cipher_name == "3des" else decrepit.RC2(key)
    dec = Cipher(algorithm, modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(block * 8).unpadder()
    try:
        return unpadder.update(dec.update(data) + dec.finalize()) + unpadder.finalize()
    except ValueError:
        raise errors.WrongPassword(".epf: wrong password or corrupted file") from None


def _legacy_key_bags(auth_safe_der: bytes, password: str) -> int:
    """The key bags of a legacy file, with every iteration count in it checked (in encrypted
    contents too), so that OpenSSL never spins on a count chosen by the file."""
    count = 0
    for ci in pkcs12.AuthenticatedSafe.load(auth_safe_der, strict=True):
        ctype = ci["content_type"].native
        if ctype == "data":
            contents = ci["content"].native
        elif ctype == "encrypted_data":
            eci = ci["content"]["encrypted_content_info"]
            alg = eci["content_encryption_algorithm"]
            data = eci["encrypted_content"].native
            if alg["algorithm"].native == "pbes2":
                contents = _pbes2_decrypt(alg, data, password, {})
            else:
                contents = _legacy_decrypt(alg, data, password)
            if contents is None:  # RC2-40, which only OpenSSL runs: its own count was checked
                continue
        else:
            raise errors.UnsupportedAlgorithm(f"PKCS#12 content {ctype}")
        for bag in pkcs12.SafeContents.load(contents, strict=True):
            kind = bag["bag_id"].native
            if kind == "pkcs8_shrouded_key_bag":
                alg = bag["bag_value"]["encryption_algorithm"]
                name = alg["algorithm"].native
                if name == "pbes2":
                    iterations = alg["parameters"]["key_derivation_func"]["parameters"]["iteration_count"].native
                    _check_iterations(iterations, "PBKDF2")
                else:
                    _check_iterations(alg["parameters"]["iterations"].native, "legacy PBE", MAX_LEGACY_ITERATIONS)
            count += kind in ("pkcs8_shrouded_key_bag", "key_bag")
    return count


def _attrs(name: str, local_id: bytes | None) -> pkcs12.Attributes:
    attrs: list[dict[str, object]] = [{"type": "friendly_name", "values": [name]}]
    if local_id is not None:
        attrs.append({"type": "local_key_id", "values": [local_id]})
    return pkcs12.Attributes(attrs)


def _public_der(key: object) -> bytes:
    public = key.public_key() if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else key
    assert isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cert_public_der(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except _PARSE_ERRORS:
        return None


def _software_key(key: object) -> PrivateKey:
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise errors.UnsupportedAlgorithm(f".epf: a {type(key).__name__} key is not supported (RSA or EC)")
    return key


FoundKeys = list[tuple[PrivateKey, bytes, str]]
FoundCerts = list[tuple[x509.Certificate, bytes, str]]


def read_auth_safe(auth_safe_der: bytes, password: str, what: str) -> tuple[FoundKeys, FoundCerts]:
    """The keys and certificates (each with its localKeyId and friendly name) of a MAC-checked file."""
    cache: _KeyCache = {}
    found_keys: list[tuple[PrivateKey, bytes, str]] = []
    found_certs: list[tuple[x509.Certificate, bytes, str]] = []
    for ci in pkcs12.AuthenticatedSafe.load(auth_safe_der, strict=True):
        ctype = ci["content_type"].native
        if ctype == "data":
            contents = ci["content"].native
        elif ctype == "encrypted_data":
            eci = ci["content"]["encrypted_content_info"]
            contents = _pbes2_decrypt(
                eci["content_encryption_algorithm"], eci["encrypted_content"].native, password, cache
            )
        else:
            raise errors.UnsupportedAlgorithm(f"{what}: PKCS#12 content {ctype}")
        for bag in pkcs12.SafeContents.load(contents, strict=True):
            _read_bag(bag, found_keys, found_certs, cache, password)
    return found_keys, found_certs


def _read_bag(
    bag: pkcs12.SafeBag,
    found_keys: list[tuple[PrivateKey, bytes, str]],
    found_certs: list[tuple[x509.Certificate, bytes, str]],
    cache: _KeyCache,
    password: str,
) -> None:
    attrs: dict[str, list[object]] = {}
    if bag["bag_attributes"].native:
        attrs = {a["type"].native: a["values"].native for a in bag["bag_attributes"]}
    local_ids = attrs.get("local_key_id") or [b""]
    names = attrs.get("friendly_name") or [""]
    local_id = local_ids[0] if isinstance(local_ids[0], bytes) else b""
    name = names[0] if isinstance(names[0], str) else ""
    kind = bag["bag_id"].native
    if kind == "pkcs8_shrouded_key_bag":
        epki = bag["bag_value"]
        pkcs8 = _pbes2_decrypt(epki["encryption_algorithm"], epki["encrypted_data"].native, password, cache)
        found_keys.append((_software_key(serialization.load_der_private_key(pkcs8, None)), local_id, name))
    elif kind == "key_bag":
        key = serialization.load_der_private_key(bag["bag_value"].dump(), None)
        found_keys.append((_software_key(key), local_id, name))
    elif kind == "cert_bag" and bag["bag_value"]["cert_id"].native == "x509":
        cert = x509.load_der_x509_certificate(bag["bag_value"]["cert_value"].parsed.dump())
        _ = cert.extensions  # parsed lazily: a bad extension must fail here, not in a later call
        found_certs.append((cert, local_id, name))
    # CRL, secret and other bags are not for us; they are dropped on the next save


def encode_pfx(
    entries: list[tuple[PrivateKey | None, x509.Certificate, str]],
    unpaired: list[tuple[PrivateKey, str]],
    password: str,
    iterations: int,
) -> bytes:
    """A PKCS#12 file: each certificate in a plain bag, its key (and every unpaired key) in a
    PBES2-shrouded bag, under a SHA-256 MAC at the same iteration count."""
    pbes = _Pbes2(password, iterations)
    bags = []
    for item_key, cert, item_name in entries:
        der_cert = cert.public_bytes(serialization.Encoding.DER)
        local_id = hashlib.sha1(der_cert).digest() if item_key is not None else None
        bags.append(
            pkcs12.SafeBag(
                {
                    "bag_id": "cert_bag",
                    "bag_value": pkcs12.CertBag({"cert_id": "x509", "cert_value": asn1x509.Certificate.load(der_cert)}),
                    "bag_attributes": _attrs(item_name, local_id),
                }
            )
        )
        if item_key is not None:
            bags.append(_key_bag(pbes, item_key, item_name, local_id))
    for key, name in unpaired:
        bags.append(_key_bag(pbes, key, name, hashlib.sha1(_public_der(key)).digest()))
    auth_der = pkcs12.AuthenticatedSafe(
        [cms.ContentInfo({"content_type": "data", "content": pkcs12.SafeContents(bags).dump()})]
    ).dump()
    mac_salt = os.urandom(16)
    mac_key = _pkcs12_kdf(password, mac_salt, iterations, MAC_KEY_ID, 32)
    pfx = pkcs12.Pfx(
        {
            "version": "v3",
            "auth_safe": {"content_type": "data", "content": auth_der},
            "mac_data": {
                "mac": {
                    "digest_algorithm": {"algorithm": "sha256", "parameters": core.Null()},
                    "digest": hmac.new(mac_key, auth_der, "sha256").digest(),
                },
                "mac_salt": mac_salt,
                "iterations": iterations,
            },
        }
    )
    return bytes(pfx.dump())


def _key_bag(pbes: _Pbes2, key: PrivateKey, name: str, local_id: bytes | None) -> pkcs12.SafeBag:
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    alg, ct = pbes.encrypt(pkcs8)
    return pkcs12.SafeBag(
        {
            "bag_id": "pkcs8_shrouded_key_bag",
            "bag_value": keys.EncryptedPrivateKeyInfo({"encryption_algorithm": alg, "encrypted_data": ct}),
            "bag_attributes": _attrs(name, local_id),
        }
    )
