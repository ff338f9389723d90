"""The .epf keystore: a PKCS#12 file holding several keys, each with its certificate (the
codec is ``hsmkm.keys.p12``).

Keys are pkcs8ShroudedKeyBags (PBES2: PBKDF2-HMAC-SHA256 at OWASP's iteration figure,
AES-256-CBC); certificates are plain cert bags (they are public); a SHA-256 MAC whose key
comes from the RFC 7292 appendix B KDF at the same iteration count (the MAC answers password
guesses, so it must cost as much as the keys). cryptography writes only one key per PKCS#12,
so the file is assembled here with asn1crypto. ``openssl pkcs12`` reads it; files from
``openssl pkcs12 -export`` and cryptography (PBES2, or the legacy PBEs for one key) load.
"""

from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import pkcs12
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12
from cryptography.x509.oid import NameOID

from hsmkm import errors
from hsmkm.atomic import sweep_temps, write_atomic
from hsmkm.bounded import MAX_KEYSTORE, read_regular
from hsmkm.certnames import label_of
from hsmkm.keys.algorithms import KeyAlgorithm, algorithm_of
from hsmkm.keys.base import EntriesByRole, KeyEntry, KeyRole, PrivateKey, role_of
from hsmkm.keys.p12 import (
    _KDF_HASHES,
    _PARSE_ERRORS,
    MAC_KEY_ID,
    OWASP_PBKDF2_SHA256_ITERATIONS,
    _cert_public_der,
    _check_iterations,
    _legacy_key_bags,
    _LegacyPbe,
    _pkcs12_kdf,
    _public_der,
    _software_key,
    encode_pfx,
    read_auth_safe,
)

MIN_PASSWORD_LENGTH = 8
EPF_MODE = 0o600


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
        store.iterations = (
            iterations if iterations is not None else max(file_iterations, OWASP_PBKDF2_SHA256_ITERATIONS)
        )
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
        entries = [(item.key, item.cert, item.name) for item in self._items]
        return encode_pfx(entries, self._unpaired, password, self.iterations)

    def _read_auth_safe(self, auth_safe_der: bytes) -> None:
        found_keys, found_certs = read_auth_safe(auth_safe_der, self._password, str(self.path))
        self._pair(found_keys, found_certs)

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
