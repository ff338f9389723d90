"""The .epf keystore: a PKCS#12 file holding several keys, each with its certificate.

Keys are pkcs8ShroudedKeyBags (PBES2: PBKDF2-HMAC-SHA256 at OWASP's iteration figure,
AES-256-CBC); certificates are plain cert bags (they are public); a SHA-256 MAC whose key
comes from the RFC 7292 appendix B KDF at the same iteration count (the MAC answers password
guesses, so it must cost as much as the keys). cryptography writes only one key per PKCS#12,
so the file is assembled here with asn1crypto. ``openssl pkcs12`` reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import algos, cms, core, keys, pkcs12
from asn1crypto import x509 as asn1x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from hsmkm import errors
from hsmkm.certnames import label_of
from hsmkm.atomic import write_atomic
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import KeyEntry, KeyRole, PrivateKey, role_of

OWASP_PBKDF2_SHA256_ITERATIONS = 600_000


@dataclass
class _Item:
    key: PrivateKey | None
    cert: x509.Certificate
    name: str


@dataclass
class EpfInfo:
    path: str
    signing: str | None
    encryption: list[str]
    ca: list[str]
    iterations: int
    pending: list[str] = field(default_factory=list)


def _pkcs12_kdf(password: str, salt: bytes, iterations: int, purpose: int, size: int) -> bytes:
    """RFC 7292 appendix B.2 with SHA-256 (u = 32, v = 64)."""
    u, v = 32, 64
    pw = (password.encode("utf-16-be") + b"\x00\x00") if password else b""
    d = bytes([purpose]) * v

    def fill(data: bytes) -> bytes:
        if not data:
            return b""
        n = v * ((len(data) + v - 1) // v)
        return (data * (n // len(data) + 1))[:n]

    i = bytearray(fill(salt) + fill(pw))
    out = b""
    while len(out) < size:
        a = hashlib.sha256(d + bytes(i)).digest()
        for _ in range(iterations - 1):
            a = hashlib.sha256(a).digest()
        out += a
        b = int.from_bytes(fill(a), "big") + 1
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j : j + v], "big") + b) % (1 << (8 * v))
            i[j : j + v] = block.to_bytes(v, "big")
    return out[:size]


def _pbkdf2(password: str, salt: bytes, iterations: int, hash_name: str = "sha256", length: int = 32) -> bytes:
    algo = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
    if hash_name not in algo:
        raise errors.UnsupportedAlgorithm(f".epf: PBKDF2 with {hash_name}")
    return PBKDF2HMAC(algo[hash_name], length, salt, iterations).derive(password.encode())


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


def _pbes2_decrypt(alg: algos.EncryptionAlgorithm, data: bytes, password: str, cache: dict[tuple[bytes, int, str, int], bytes]) -> bytes:
    if alg["algorithm"].native != "pbes2":
        raise errors.UnsupportedAlgorithm(
            f".epf: encryption {alg['algorithm'].native} is not supported (PBES2 only; re-export with AES)"
        )
    params = alg["parameters"]
    kdf = params["key_derivation_func"]
    if kdf["algorithm"].native != "pbkdf2":
        raise errors.UnsupportedAlgorithm(f".epf: key derivation {kdf['algorithm'].native}")
    kp = kdf["parameters"]
    scheme = params["encryption_scheme"]
    name = scheme["algorithm"].native
    sizes = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
    if name not in sizes:
        raise errors.UnsupportedAlgorithm(f".epf: cipher {name}")
    salt = kp["salt"].native
    iters = kp["iteration_count"].native
    prf = kp["prf"]["algorithm"].native if kp["prf"] else "sha1"
    prf = {"hmac_with_sha256": "sha256", "hmac_with_sha1": "sha1", "sha256": "sha256", "sha1": "sha1"}.get(prf, prf)
    ck = (salt, iters, prf, sizes[name])
    if ck not in cache:
        cache[ck] = _pbkdf2(password, salt, iters, prf, sizes[name])
    try:
        return _aes_cbc(cache[ck], scheme["parameters"].native, data, encrypt=False)
    except ValueError:
        raise errors.WrongPassword(".epf: wrong password or corrupted file") from None


def _attrs(name: str, local_id: bytes) -> pkcs12.Attributes:
    return pkcs12.Attributes(
        [
            {"type": "friendly_name", "values": [name]},
            {"type": "local_key_id", "values": [local_id]},
        ]
    )


class EpfKeystore:
    """A user's keys in a password-protected PKCS#12 file (an .epf)."""

    def __init__(self, path: Path, password: str, iterations: int = OWASP_PBKDF2_SHA256_ITERATIONS) -> None:
        self.path = path
        self._password = password
        self.iterations = iterations
        self._items: list[_Item] = []
        self._pending: list[PrivateKey] = []

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, password: str, iterations: int = OWASP_PBKDF2_SHA256_ITERATIONS) -> EpfKeystore:
        """A new, empty keystore (written on the first save); refuses an existing path."""
        if path.exists():
            raise errors.AlreadyExists(f"{path} exists (use --update to add to it)")
        if len(password) < 8:
            raise errors.BadInput(".epf password: at least 8 characters")
        return cls(path, password, iterations)

    @classmethod
    def open(cls, path: Path, password: str) -> EpfKeystore:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise errors.NotFound(f"no keystore at {path}") from None
        except OSError as exc:
            raise errors.BadInput(f"{path}: {exc.strerror}") from None
        store = cls(path, password)
        store._load(data)
        return store

    def _load(self, data: bytes) -> None:
        try:
            pfx = pkcs12.Pfx.load(data)
            auth_safe_der = pfx["auth_safe"]["content"].native
            mac_data = pfx["mac_data"]
            if mac_data.native is None:
                raise errors.MalformedInput(f"{self.path}: PKCS#12 without a MAC is refused")
            digest_alg = mac_data["mac"]["digest_algorithm"]["algorithm"].native
            salt = mac_data["mac_salt"].native
            iters = mac_data["iterations"].native
            expected = mac_data["mac"]["digest"].native
        except errors.HsmkmError:
            raise
        except (ValueError, TypeError, KeyError):
            raise errors.MalformedInput(f"{self.path}: not a PKCS#12 (.epf) file") from None
        if digest_alg != "sha256":
            raise errors.UnsupportedAlgorithm(f"{self.path}: MAC with {digest_alg} (SHA-256 expected)")
        mac_key = _pkcs12_kdf(self._password, salt, iters, 3, 32)
        if not hmac.compare_digest(hmac.new(mac_key, auth_safe_der, "sha256").digest(), expected):
            raise errors.WrongPassword(f"{self.path}: wrong password or corrupted file")
        self.iterations = max(iters, 1)
        cache: dict[tuple[bytes, int, str, int], bytes] = {}
        keys_by_id: dict[bytes, tuple[PrivateKey, str]] = {}
        certs: list[tuple[x509.Certificate, bytes, str]] = []
        try:
            for ci in pkcs12.AuthenticatedSafe.load(auth_safe_der):
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
                for bag in pkcs12.SafeContents.load(contents):
                    self._read_bag(bag, keys_by_id, certs, cache)
        except errors.HsmkmError:
            raise
        except (ValueError, TypeError, KeyError):
            raise errors.MalformedInput(f"{self.path}: damaged PKCS#12 contents") from None
        for cert, local_id, name in certs:
            key_name = keys_by_id.get(local_id)
            self._items.append(_Item(key_name[0] if key_name else None, cert, name or (key_name[1] if key_name else "")))

    def _read_bag(
        self,
        bag: pkcs12.SafeBag,
        keys_by_id: dict[bytes, tuple[PrivateKey, str]],
        certs: list[tuple[x509.Certificate, bytes, str]],
        cache: dict[tuple[bytes, int, str, int], bytes],
    ) -> None:
        attrs = {a["type"].native: a["values"].native for a in bag["bag_attributes"]} if bag["bag_attributes"].native else {}
        local_id = (attrs.get("local_key_id") or [b""])[0]
        name = (attrs.get("friendly_name") or [""])[0]
        kind = bag["bag_id"].native
        if kind == "pkcs8_shrouded_key_bag":
            epki = bag["bag_value"]
            pkcs8 = _pbes2_decrypt(epki["encryption_algorithm"], epki["encrypted_data"].native, self._password, cache)
            key = serialization.load_der_private_key(pkcs8, None)
            keys_by_id[local_id] = (key, name)  # type: ignore[assignment]
        elif kind == "key_bag":
            key = serialization.load_der_private_key(bag["bag_value"].dump(), None)
            keys_by_id[local_id] = (key, name)  # type: ignore[assignment]
        elif kind == "cert_bag" and bag["bag_value"]["cert_id"].native == "x509":
            cert = x509.load_der_x509_certificate(bag["bag_value"]["cert_value"].parsed.dump())
            certs.append((cert, local_id, name))

    # --- the Keystore interface ----------------------------------------------------------

    def _entries(self, role: KeyRole) -> list[KeyEntry]:
        out = [KeyEntry(i.key, i.cert, role) for i in self._items if i.key is not None and role_of(i.cert) is role]
        out.sort(key=lambda e: e.certificate.not_valid_before_utc, reverse=True)
        return out

    def signing_entry(self) -> KeyEntry | None:
        entries = self._entries(KeyRole.SIGN)
        return entries[0] if entries else None

    def encryption_entries(self) -> list[KeyEntry]:
        return self._entries(KeyRole.ENCRYPT)

    def ca_certificates(self) -> list[x509.Certificate]:
        return [i.cert for i in self._items if i.key is None and role_of(i.cert) is KeyRole.CA]

    # --- enrollment ------------------------------------------------------------------------

    def generate_signing_key(self, alg: KeyAlgorithm) -> PrivateKey:
        key = alg.generate()
        self._pending.append(key)
        return key

    def discard_key(self, key: PrivateKey) -> None:
        self._pending = [k for k in self._pending if k is not key]

    def commit(
        self,
        signing: tuple[PrivateKey, x509.Certificate],
        encryption: list[tuple[PrivateKey, x509.Certificate]],
        ca_certs: list[x509.Certificate],
    ) -> None:
        """Add the enrollment's keys and certificates (older ones stay), then save."""
        have = {i.cert.fingerprint(hashes.SHA256()) for i in self._items}

        def add(key: PrivateKey | None, cert: x509.Certificate, name: str) -> None:
            if cert.fingerprint(hashes.SHA256()) not in have:
                self._items.append(_Item(key, cert, name))
                have.add(cert.fingerprint(hashes.SHA256()))

        key, cert = signing
        email = label_of(cert)
        add(key, cert, f"{email} sign {cert.not_valid_before_utc.date()} {cert.serial_number:x}"[:80])
        for k, c in encryption:
            add(k, c, f"{email} enc {c.not_valid_before_utc.date()} {c.serial_number:x}"[:80])
        for ca in ca_certs:
            add(None, ca, ca.subject.rfc4514_string()[:80])
        self._pending = []
        self.save()

    def add_entry(self, key: PrivateKey | None, cert: x509.Certificate, name: str | None = None) -> None:
        """Add a key with its certificate (or a certificate alone); written by ``save``."""
        self._items.append(_Item(key, cert, name or f"{label_of(cert)} {cert.serial_number:x}"[:80]))

    # --- writing -----------------------------------------------------------------------

    def save(self) -> None:
        """Write the whole file atomically (temporary file, fsync, rename), mode 0600."""
        pbes = _Pbes2(self._password, self.iterations)
        bags = []
        for item in self._items:
            der_cert = item.cert.public_bytes(serialization.Encoding.DER)
            local_id = hashlib.sha1(der_cert).digest()
            bags.append(
                pkcs12.SafeBag(
                    {
                        "bag_id": "cert_bag",
                        "bag_value": pkcs12.CertBag(
                            {"cert_id": "x509", "cert_value": asn1x509.Certificate.load(der_cert)}
                        ),
                        "bag_attributes": _attrs(item.name, local_id) if item.key is not None else pkcs12.Attributes(
                            [{"type": "friendly_name", "values": [item.name]}]
                        ),
                    }
                )
            )
            if item.key is not None:
                pkcs8 = item.key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                alg, ct = pbes.encrypt(pkcs8)
                bags.append(
                    pkcs12.SafeBag(
                        {
                            "bag_id": "pkcs8_shrouded_key_bag",
                            "bag_value": keys.EncryptedPrivateKeyInfo(
                                {"encryption_algorithm": alg, "encrypted_data": ct}
                            ),
                            "bag_attributes": _attrs(item.name, local_id),
                        }
                    )
                )
        safe = pkcs12.SafeContents(bags)
        auth_safe = pkcs12.AuthenticatedSafe([cms.ContentInfo({"content_type": "data", "content": safe.dump()})])
        auth_der = auth_safe.dump()
        mac_salt = os.urandom(16)
        mac_key = _pkcs12_kdf(self._password, mac_salt, self.iterations, 3, 32)
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
        write_atomic(self.path, pfx.dump(), 0o600)

    def change_password(self, new_password: str) -> None:
        if len(new_password) < 8:
            raise errors.BadInput(".epf password: at least 8 characters")
        self._password = new_password
        self.save()

    def info(self) -> EpfInfo:
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
        )


