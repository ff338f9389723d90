"""The .epf keystore: a PKCS#12 file holding several keys, each with its certificate.

Keys are pkcs8ShroudedKeyBags (PBES2: PBKDF2-HMAC-SHA256 at OWASP's iteration figure,
AES-256-CBC); certificates are plain cert bags (they are public); a SHA-256 MAC whose key
comes from the RFC 7292 appendix B KDF at the same iteration count (the MAC answers password
guesses, so it must cost as much as the keys). cryptography writes only one key per PKCS#12,
so the file is assembled here with asn1crypto. ``openssl pkcs12`` reads it; files from
``openssl pkcs12 -export`` and cryptography (PBES2, or the legacy PBEs for one key) load.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import algos, cms, core, keys, pkcs12
from asn1crypto import x509 as asn1x509
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12
from cryptography.x509.oid import NameOID

from hsmkm import errors
from hsmkm.atomic import sweep_temps, write_atomic
from hsmkm.bounded import MAX_KEYSTORE, read_regular
from hsmkm.certnames import label_of
from hsmkm.keys.algorithms import KeyAlgorithm, algorithm_of
from hsmkm.keys.base import EntriesByRole, KeyEntry, KeyRole, PrivateKey, role_of

OWASP_PBKDF2_SHA256_ITERATIONS = 600_000
# A file may ask for any count; past this it is a denial of service, not protection.
MAX_ITERATIONS = 10_000_000
# The legacy PBEs run the RFC 7292 KDF here (in Python) to look inside before OpenSSL reads the
# file; their files use 2,048.
MAX_LEGACY_ITERATIONS = 1_000_000
MIN_PASSWORD_LENGTH = 8
EPF_MODE = 0o600

# hash name -> (constructor, u = digest bytes, v = block bytes) for the RFC 7292 KDF
_KDF_HASHES = {
    "sha1": (hashlib.sha1, 20, 64),
    "sha256": (hashlib.sha256, 32, 64),
    "sha384": (hashlib.sha384, 48, 128),
    "sha512": (hashlib.sha512, 64, 128),
}
_PBKDF2_PRFS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_AES_KEY_SIZES = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, RecursionError,
                 crypto_exceptions.UnsupportedAlgorithm, *errors.CERTIFICATE_ERRORS)
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


@dataclass
class _Item:
    key: PrivateKey | None
    cert: x509.Certificate
    name: str
    order: int  # insertion order, the tie-break between equal notBefore times


@dataclass
class EpfInfo:
    """What an .epf holds, without any secret."""

    path: str
    signing: str | None
    encryption: list[str]
    ca: list[str]
    iterations: int
    pending: list[str] = field(default_factory=list)
    unpaired_keys: int = 0


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
    if prf not in _PBKDF2_PRFS:
        raise errors.UnsupportedAlgorithm(f".epf: PBKDF2 with {prf}")
    return PBKDF2HMAC(_PBKDF2_PRFS[prf](), length, salt, iterations).derive(password.encode("utf-8"))


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
        return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except _PARSE_ERRORS:
        return None


def _software_key(key: object) -> PrivateKey:
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise errors.UnsupportedAlgorithm(f".epf: a {type(key).__name__} key is not supported (RSA or EC)")
    return key


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise errors.BadInput(f".epf password: at least {MIN_PASSWORD_LENGTH} characters")


class EpfKeystore(EntriesByRole):
    """A user's keys in a password-protected PKCS#12 file (an .epf)."""

    def __init__(self, path: Path, password: str, iterations: int = OWASP_PBKDF2_SHA256_ITERATIONS) -> None:
        self.path = Path(path)
        self._password = password
        self.iterations = iterations
        self._items: list[_Item] = []
        self._unpaired: list[tuple[PrivateKey, str]] = []  # keys without a certificate, kept as found
        self._pending: list[PrivateKey] = []
        self._new = False

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, password: str, iterations: int = OWASP_PBKDF2_SHA256_ITERATIONS) -> EpfKeystore:
        """A new, empty keystore (written on the first save); refuses an existing path."""
        path = Path(path)
        if path.exists() or path.is_symlink():
            cls(path, password)._settle_after_commit()
            raise errors.AlreadyExists(f"{path} exists (use --update to add to it)")
        _check_password(password)
        _check_iterations(iterations, "PBKDF2")
        store = cls(path, password, iterations)
        store._new = True
        return store

    @classmethod
    def open(cls, path: Path, password: str, iterations: int | None = None) -> EpfKeystore:
        """Load an .epf; saves use ``iterations``, else the file's count raised to OWASP's figure."""
        path = Path(path)
        try:
            data = read_regular(path, MAX_KEYSTORE, "keystore")
        except errors.NotFound:
            raise errors.NotFound(f"no keystore at {path}") from None
        store = cls(path, password)
        file_iterations = store._load(data)
        store.iterations = iterations if iterations is not None else max(file_iterations, OWASP_PBKDF2_SHA256_ITERATIONS)
        return store

    def _load(self, data: bytes) -> int:
        """Verify the MAC, read every bag; return the file's MAC iteration count."""
        try:
            pfx = pkcs12.Pfx.load(data, strict=True)
            if pfx["auth_safe"]["content_type"].native != "data":
                raise errors.UnsupportedAlgorithm(f"{self.path}: public-key protected PKCS#12 is not supported")
            auth_safe_der = pfx["auth_safe"]["content"].native
            mac_data = pfx["mac_data"]
            if mac_data.native is None:
                raise errors.MalformedInput(f"{self.path}: a PKCS#12 file without a MAC is refused")
            digest_alg = mac_data["mac"]["digest_algorithm"]["algorithm"].native
            salt = mac_data["mac_salt"].native
            iterations: int = mac_data["iterations"].native
            expected = mac_data["mac"]["digest"].native
        except errors.HsmkmError:
            raise
        except _PARSE_ERRORS:
            raise errors.MalformedInput(f"{self.path}: not a PKCS#12 (.epf) file") from None
        if digest_alg not in _KDF_HASHES:
            raise errors.UnsupportedAlgorithm(f"{self.path}: MAC with {digest_alg}")
        _check_iterations(iterations, "MAC")
        size = _KDF_HASHES[digest_alg][1]
        # an empty password is "" (two NUL bytes) to OpenSSL, or absent (no bytes) to others
        candidates: list[str | bytes] = [self._password] + ([b""] if not self._password else [])
        for candidate in candidates:
            mac_key = _pkcs12_kdf(candidate, salt, iterations, MAC_KEY_ID, size, digest_alg)
            if hmac.compare_digest(hmac.new(mac_key, auth_safe_der, digest_alg).digest(), expected):
                break
        else:
            raise errors.WrongPassword(f"{self.path}: wrong password or corrupted file")
        try:
            self._read_auth_safe(auth_safe_der)
        except _LegacyPbe:
            self._items, self._unpaired = [], []
            self._load_legacy(data, auth_safe_der)
        except errors.HsmkmError:
            raise
        except _PARSE_ERRORS:
            raise errors.MalformedInput(f"{self.path}: damaged PKCS#12 contents") from None
        return iterations

    def _read_auth_safe(self, auth_safe_der: bytes) -> None:
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
                    eci["content_encryption_algorithm"], eci["encrypted_content"].native, self._password, cache
                )
            else:
                raise errors.UnsupportedAlgorithm(f"{self.path}: PKCS#12 content {ctype}")
            for bag in pkcs12.SafeContents.load(contents, strict=True):
                self._read_bag(bag, found_keys, found_certs, cache)
        self._pair(found_keys, found_certs)

    def _read_bag(
        self,
        bag: pkcs12.SafeBag,
        found_keys: list[tuple[PrivateKey, bytes, str]],
        found_certs: list[tuple[x509.Certificate, bytes, str]],
        cache: _KeyCache,
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
            pkcs8 = _pbes2_decrypt(epki["encryption_algorithm"], epki["encrypted_data"].native, self._password, cache)
            found_keys.append((_software_key(serialization.load_der_private_key(pkcs8, None)), local_id, name))
        elif kind == "key_bag":
            key = serialization.load_der_private_key(bag["bag_value"].dump(), None)
            found_keys.append((_software_key(key), local_id, name))
        elif kind == "cert_bag" and bag["bag_value"]["cert_id"].native == "x509":
            cert = x509.load_der_x509_certificate(bag["bag_value"]["cert_value"].parsed.dump())
            cert.extensions  # parsed lazily: a bad extension must fail here, not in a later call
            found_certs.append((cert, local_id, name))
        # CRL, secret and other bags are not for us; they are dropped on the next save

    def _pair(
        self, found_keys: list[tuple[PrivateKey, bytes, str]], found_certs: list[tuple[x509.Certificate, bytes, str]]
    ) -> None:
        """Give each certificate its key: by public key, which is what matters, not by localKeyId."""
        by_public: dict[bytes, tuple[PrivateKey, str]] = {}
        for key, _, name in found_keys:
            by_public.setdefault(_public_der(key), (key, name))
        used: set[bytes] = set()
        for cert, _, name in found_certs:
            spki = _cert_public_der(cert)
            match = by_public.get(spki) if spki is not None else None
            if match is not None and spki is not None:
                used.add(spki)
            cert_key = match[0] if match else None
            self._items.append(_Item(cert_key, cert, name or (match[1] if match else ""), len(self._items)))
        self._unpaired = [(k, n) for pub, (k, n) in by_public.items() if pub not in used]

    def _load_legacy(self, data: bytes, auth_safe_der: bytes) -> None:
        """A file with the pre-PBES2 encryptions (openssl -legacy): cryptography reads one key."""
        try:
            key_bags = _legacy_key_bags(auth_safe_der, self._password)
            if key_bags > 1:
                raise errors.UnsupportedAlgorithm(
                    f"{self.path}: a legacy-encrypted PKCS#12 with {key_bags} keys; re-export it with AES"
                )
            loaded = crypto_pkcs12.load_pkcs12(data, self._password.encode("utf-8"))
        except errors.HsmkmError:
            raise
        except _PARSE_ERRORS:
            raise errors.MalformedInput(f"{self.path}: damaged legacy PKCS#12 contents") from None
        keys_found = [] if loaded.key is None else [(_software_key(loaded.key), b"", "")]
        certs = [loaded.cert] if loaded.cert is not None else []
        certs += loaded.additional_certs
        self._pair(
            keys_found,
            [(c.certificate, b"", (c.friendly_name or b"").decode("utf-8", "replace")) for c in certs],
        )

    # --- the Keystore interface ----------------------------------------------------------

    def _entries(self, role: KeyRole) -> list[KeyEntry]:
        mine = [i for i in self._items if i.key is not None and role_of(i.cert) is role]
        mine.sort(key=lambda i: (i.cert.not_valid_before_utc, i.order), reverse=True)
        return [KeyEntry(i.key, i.cert, role) for i in mine if i.key is not None]



    def ca_certificates(self) -> list[x509.Certificate]:
        """The CA certificates stored without a key."""
        return [i.cert for i in self._items if i.key is None and role_of(i.cert) is KeyRole.CA]

    # --- changing the contents (in memory; ``save`` writes) --------------------------------

    @property
    def pending_path(self) -> Path:
        """Where a new signing key waits, under the keystore's password, until it is stored."""
        return self.path.with_name(f".{self.path.name}.pending")

    def generate_signing_key(self, alg: KeyAlgorithm) -> PrivateKey:
        """A signing key for an enrollment, kept (encrypted) beside the keystore until stored.

        An enrollment cut short after the KM answered is retried with the same key, so the
        KM can give the same answer again; a key left by such a run is taken up here.
        """
        key = self._waiting_key(alg)
        if key is None:
            key = alg.generate()
            holder = EpfKeystore(self.pending_path, self._password, self.iterations)
            holder._unpaired = [(key, "pending signing key")]
            write_atomic(self.pending_path, holder._encode(self._password), EPF_MODE)
        self._pending.append(key)
        return key

    def _waiting_key(self, alg: KeyAlgorithm) -> PrivateKey | None:
        if not self.pending_path.is_file():
            return None
        try:
            held = EpfKeystore.open(self.pending_path, self._password)
        except errors.HsmkmError:
            return None
        for key, _ in held._unpaired:
            if algorithm_of(key.public_key()) is alg:
                return key
        return None

    def _settle_after_commit(self) -> None:
        """Tidy what a run killed just after writing this keystore left: its temporary link,
        and the waiting signing key if the keystore now holds it."""
        sweep_temps(self.path.parent, self.path.name)
        if not self.pending_path.is_file():
            return
        try:
            stored = EpfKeystore.open(self.path, self._password)
            held = EpfKeystore.open(self.pending_path, self._password)
        except errors.HsmkmError:
            return
        stored_keys = {_public_der(i.key) for i in stored._items if i.key is not None}
        if all(_public_der(k) in stored_keys for k, _ in held._unpaired):
            self._drop_pending_file()

    def _drop_pending_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_path.unlink()

    def discard_key(self, key: PrivateKey) -> None:
        """Forget a generated key that will not be stored (the enrollment failed)."""
        self._pending = [k for k in self._pending if k is not key]
        self._drop_pending_file()

    def _has(self, cert: x509.Certificate) -> bool:
        return any(i.cert == cert for i in self._items)

    def _add(self, key: PrivateKey | None, cert: x509.Certificate, name: str) -> None:
        if key is not None:
            if _public_der(key) != _cert_public_der(cert):
                raise errors.BadInput(f"the key does not belong to certificate {cert.serial_number:x}")
            self._pending = [k for k in self._pending if k is not key]
        if not self._has(cert):
            self._items.append(_Item(key, cert, name[:80], len(self._items)))

    def set_signing_entry(self, key: PrivateKey, cert: x509.Certificate) -> None:
        """Store a signing key with its certificate; the newest such becomes the signing entry."""
        if role_of(cert) is not KeyRole.SIGN:
            raise errors.BadInput("not a signing certificate (keyUsage digitalSignature)")
        self._add(key, cert, f"{label_of(cert)} sign {cert.not_valid_before_utc.date()} {cert.serial_number:x}")

    def add_encryption_entry(self, key: PrivateKey, cert: x509.Certificate) -> None:
        """Store an encryption key (current or historical) with its certificate."""
        if role_of(cert) is not KeyRole.ENCRYPT:
            raise errors.BadInput("not an encryption certificate (keyEncipherment or keyAgreement)")
        self._add(key, cert, f"{label_of(cert)} enc {cert.not_valid_before_utc.date()} {cert.serial_number:x}")

    def add_ca_certificate(self, cert: x509.Certificate, name: str | None = None) -> None:
        """Store a CA certificate the keystore trusts."""
        if role_of(cert) is not KeyRole.CA:
            raise errors.BadInput("not a CA certificate (keyUsage keyCertSign)")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self._add(None, cert, name or (str(cns[0].value) if cns else cert.subject.rfc4514_string()))

    def add_entry(self, key: PrivateKey | None, cert: x509.Certificate, name: str | None = None) -> None:
        """Add a key with its certificate (or a certificate alone), whatever its role."""
        self._add(key, cert, name or f"{label_of(cert)} {cert.serial_number:x}")

    def commit(
        self,
        signing: tuple[PrivateKey, x509.Certificate],
        encryption: list[tuple[PrivateKey, x509.Certificate]],
        ca_certs: list[x509.Certificate],
    ) -> None:
        """Add an enrollment's keys and certificates (older ones stay), then save."""
        self.set_signing_entry(*signing)
        for key, cert in encryption:
            self.add_encryption_entry(key, cert)
        for ca in ca_certs:
            self.add_ca_certificate(ca)
        self._pending = []
        self.save()
        self._drop_pending_file()

    # --- writing -----------------------------------------------------------------------

    def _encode(self, password: str) -> bytes:
        pbes = _Pbes2(password, self.iterations)
        bags = []
        for item in self._items:
            der_cert = item.cert.public_bytes(serialization.Encoding.DER)
            local_id = hashlib.sha1(der_cert).digest() if item.key is not None else None
            bags.append(
                pkcs12.SafeBag(
                    {
                        "bag_id": "cert_bag",
                        "bag_value": pkcs12.CertBag({"cert_id": "x509", "cert_value": asn1x509.Certificate.load(der_cert)}),
                        "bag_attributes": _attrs(item.name, local_id),
                    }
                )
            )
            if item.key is not None:
                bags.append(self._key_bag(pbes, item.key, item.name, local_id))
        for key, name in self._unpaired:
            bags.append(self._key_bag(pbes, key, name, hashlib.sha1(_public_der(key)).digest()))
        auth_der = pkcs12.AuthenticatedSafe(
            [cms.ContentInfo({"content_type": "data", "content": pkcs12.SafeContents(bags).dump()})]
        ).dump()
        mac_salt = os.urandom(16)
        mac_key = _pkcs12_kdf(password, mac_salt, self.iterations, MAC_KEY_ID, 32)
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
                    "iterations": self.iterations,
                },
            }
        )
        return bytes(pfx.dump())

    @staticmethod
    def _key_bag(pbes: _Pbes2, key: PrivateKey, name: str, local_id: bytes | None) -> pkcs12.SafeBag:
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        alg, ct = pbes.encrypt(pkcs8)
        return pkcs12.SafeBag(
            {
                "bag_id": "pkcs8_shrouded_key_bag",
                "bag_value": keys.EncryptedPrivateKeyInfo({"encryption_algorithm": alg, "encrypted_data": ct}),
                "bag_attributes": _attrs(name, local_id),
            }
        )

    def _write(self, password: str) -> None:
        data = self._encode(password)
        try:
            # A new keystore is linked into place, so one that appeared meanwhile is never replaced.
            write_atomic(self.path, data, EPF_MODE, exclusive=self._new)
        except FileExistsError:
            raise errors.AlreadyExists(f"{self.path} appeared meanwhile; not overwriting it") from None
        self._new = False

    def save(self) -> None:
        """Write the whole file atomically (temporary file, fsync, rename), mode 0600."""
        self._write(self._password)

    def change_password(self, new_password: str) -> None:
        """Rewrite the file under a new password; on any failure the old file and password stay."""
        _check_password(new_password)
        self._write(new_password)
        self._password = new_password

    def info(self) -> EpfInfo:
        """A summary for people: serials, addresses, validity; never a secret."""

        def describe(e: KeyEntry) -> str:
            c = e.certificate
            return f"{c.serial_number:x} ({label_of(c)}, until {c.not_valid_after_utc.date()})"

        s = self.signing_entry()
        return EpfInfo(
            path=str(self.path),
            signing=describe(s) if s else None,
            encryption=[describe(e) for e in self.encryption_entries()],
            ca=[c.subject.rfc4514_string() for c in self.ca_certificates()],
            iterations=self.iterations,
            pending=[f"{type(k).__name__} ({k.key_size} bits)" for k in self._pending],
            unpaired_keys=len(self._unpaired),
        )
