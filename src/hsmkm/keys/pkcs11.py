"""PKCS#11 backend: modules, tokens, sessions, and token keys that look like cryptography keys.

Calls into one module are serialised by a per-module lock: python-pkcs11 initialises the
module with C_Initialize(NULL), so the module does no locking of its own (SoftHSM2 crashed
with two threads signing at once). Parallelism comes from worker processes, each loading
the module afresh (see ``Pkcs11Module.load``, which re-initialises after a fork).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import pkcs11
import pkcs11.exceptions as p11e
from asn1crypto import core as asn1core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.softhsm_store import Repair, TokenStore

if TYPE_CHECKING:
    from hsmkm.keys.uri import Pkcs11Uri

_CURVES: dict[str, ec.EllipticCurve] = {
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
    "1.3.132.0.35": ec.SECP521R1(),
}
_CURVE_NAMES = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34"}

# DigestInfo prefixes (RFC 8017 §9.2 note 1) for signing a pre-computed hash with CKM_RSA_PKCS.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
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


_FIND_TRIES = 6


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn python-pkcs11 exceptions into hsmkm's typed errors (messages carry no secrets)."""
    try:
        yield
    except p11e.PinIncorrect:
        raise errors.WrongPin(f"{what}: wrong PIN") from None
    except p11e.PinLocked:
        raise errors.PinLocked(f"{what}: the PIN is locked") from None
    except (p11e.PinLenRange, p11e.PinInvalid):
        raise errors.WrongPin(f"{what}: PIN of invalid length or characters") from None
    except (p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.FunctionNotSupported):
        raise errors.MechanismUnsupported(f"{what}: mechanism not supported by the token") from None
    except (p11e.NoSuchToken, p11e.TokenNotPresent, p11e.SlotIDInvalid):
        raise errors.TokenNotFound(f"{what}: token not present") from None
    except (p11e.DeviceRemoved, p11e.DeviceError, p11e.GeneralError) as exc:
        raise errors.TokenError(f"{what}: token failure ({type(exc).__name__})") from None
    except p11e.EncryptedDataInvalid:
        raise errors.SignatureInvalid(f"{what}: ciphertext or tag does not verify") from None
    except p11e.PKCS11Error as exc:
        raise errors.TokenError(f"{what}: {type(exc).__name__}") from None


class Pkcs11Module:
    """One loaded PKCS#11 module in this process, with the lock that serialises calls into it."""

    def __init__(self, path: str, lib: Any, config: str | None, guarded: bool = False) -> None:
        self.path = path
        self.lib = lib
        self.config = config
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self._tokens: dict[tuple[str, str], TokenSession] = {}
        # A SoftHSM2 file store named by ``config`` is checked before the module reads it,
        # and its copy refreshed after every change of token objects.
        self.store = TokenStore.of_config(config) if config and guarded else None
        self.repairs: list[Repair] = []

    def changed(self) -> None:
        """Token objects changed: refresh the store's verified copy."""
        if self.store is not None:
            with self.lock:
                self.store.refresh()

    def take_repairs(self) -> list[Repair]:
        """The repairs the store check made at load, each reported once."""
        out, self.repairs = self.repairs, []
        return out

    # The module's C state is process-wide (a second C_Initialize fails), so the loaded
    # modules are too: this registry mirrors that, and is reset after a fork.
    _loaded: dict[str, Pkcs11Module] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def load(cls, path: str, softhsm_config: str | None = None) -> Pkcs11Module:
        """Load (once per process) the module at ``path``.

        ``softhsm_config`` sets SOFTHSM2_CONF before the module initialises; a module loaded
        with another config is finalised and initialised again (its sessions end).
        """
        with cls._registry_lock:
            mod = cls._loaded.get(path)
            if (
                mod is not None
                and mod.pid == os.getpid()
                and (softhsm_config is None or _same_file(mod.config, softhsm_config))
            ):
                return mod
            explicit = softhsm_config is not None
            if softhsm_config is not None:
                os.environ["SOFTHSM2_CONF"] = softhsm_config
            else:
                softhsm_config = os.environ.get("SOFTHSM2_CONF")
            # Only a store the caller names is guarded (a home's own), not one from the environment.
            store = TokenStore.of_config(softhsm_config) if explicit and softhsm_config else None
            repairs = store.check() if store is not None else []
            if store is not None:
                store.attach()  # held for the process's life, before the module touches the store
            if mod is not None:
                # After a fork, or for another SoftHSM2 store: start the module afresh. The
                # old sessions end, and their handles would be reused by the new module's
                # sessions, possibly on another token: they are made unusable first.
                for ended in mod._tokens.values():
                    ended.session = _EndedSession(ended.label)
                    ended.is_open = False
                mod._tokens.clear()
                with contextlib.suppress(p11e.PKCS11Error):
                    mod.lib.finalize()
                with mapped_errors(f"PKCS#11 module {path}"):
                    mod.lib.initialize()
                fresh = cls(path, mod.lib, softhsm_config, guarded=explicit)
            else:
                if not os.path.exists(path):
                    raise errors.ModuleNotFound(f"PKCS#11 module not found: {path}")
                try:
                    lib = pkcs11.lib(path)
                except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
                    raise errors.ModuleNotFound(
                        f"cannot load PKCS#11 module {path}: {type(exc).__name__}"
                    ) from None
                fresh = cls(path, lib, softhsm_config, guarded=explicit)
            fresh.repairs = repairs
            cls._loaded[path] = fresh
            return fresh

    def find_token(
        self, label: str | None = None, serial: str | None = None, slot_id: int | None = None
    ) -> Any:
        """The python-pkcs11 token matching label / serial / slot id (exactly one)."""
        with self.lock, mapped_errors(f"PKCS#11 module {self.path}"):
            found = []
            for slot in self.lib.get_slots(token_present=True):
                if slot_id is not None and slot.slot_id != slot_id:
                    continue
                token = slot.get_token()
                if label is not None and token.label != label:
                    continue
                if serial is not None and token.serial.decode().strip() != serial:
                    continue
                if not (token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED):
                    continue
                found.append(token)
        what = ", ".join(
            f"{k}={v}" for k, v in (("label", label), ("serial", serial), ("slot", slot_id)) if v is not None
        )
        if not found:
            raise errors.TokenNotFound(f"no token with {what or 'any attributes'} in {self.path}")
        if len(found) > 1:
            raise errors.TokenNotFound(f"more than one token with {what}; name it by serial")
        return found[0]

    def _find_token_retrying(self, label: str | None, serial: str | None, slot_id: int | None) -> Any:
        # SoftHSM2's file store can be caught mid-write by another process (a login rewrites
        # the token file), so a token may briefly look absent or fail: look again, and
        # re-read the store when this process has no sessions to lose.
        for attempt in range(_FIND_TRIES):
            try:
                return self.find_token(label, serial, slot_id)
            except (errors.TokenNotFound, errors.TokenError):
                if attempt == _FIND_TRIES - 1:
                    raise
                time.sleep(0.02 * (2**attempt))
                with self.lock:
                    if not any(t.is_open for t in self._tokens.values()):
                        with contextlib.suppress(p11e.PKCS11Error):
                            self.lib.reinitialize()
        raise AssertionError("unreachable")

    def token_labels(self) -> list[str]:
        with self.lock, mapped_errors(f"PKCS#11 module {self.path}"):
            return [s.get_token().label for s in self.lib.get_slots(token_present=True)]

    def open_token(
        self,
        pin: str,
        label: str | None = None,
        serial: str | None = None,
        slot_id: int | None = None,
    ) -> TokenSession:
        """A logged-in read/write session on one token, opened once per process."""
        token = self._find_token_retrying(label, serial, slot_id)
        key = (token.serial.decode().strip(), token.label)
        with self.lock:
            existing = self._tokens.get(key)
            if existing is not None and existing.is_open:
                existing.check_pin(pin)
                return existing
            for attempt in range(_FIND_TRIES):
                try:
                    with mapped_errors(f"token '{token.label}'"):
                        session = token.open(rw=True, user_pin=pin)
                    break
                except (errors.WrongPin, errors.PinLocked):
                    raise
                except errors.TokenError:
                    if attempt == _FIND_TRIES - 1:
                        raise
                    time.sleep(0.02 * (2**attempt))
            ts = TokenSession(self, token.label, key[0], session, pin_digest=_pin_digest(pin))
            self._tokens[key] = ts
            return ts

    def open_uri(self, uri: Pkcs11Uri, pin: str) -> TokenSession:
        slot = int(uri.slot_id) if uri.slot_id is not None else None
        return self.open_token(pin, label=uri.token, serial=uri.serial, slot_id=slot)

    def forget(self, session: TokenSession) -> None:
        with self.lock:
            self._tokens.pop((session.serial, session.label), None)


def _same_file(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


class _EndedSession:
    """Stands in for a session whose module was re-initialised: every use is an error."""

    def __init__(self, label: str) -> None:
        self._label = label

    def __getattr__(self, name: str) -> NoReturn:
        raise errors.TokenError(f"token '{self._label}': the session ended (the PKCS#11 module was re-initialised)")


def _pin_digest(pin: str) -> bytes:
    # Kept only to notice a different PIN for an already-open session; never stored.
    return hashlib.sha256(b"hsmkm-pin-check\x00" + pin.encode()).digest()


@dataclass(frozen=True)
class KeyAttributes:
    """The custody-relevant attributes of a key object."""

    label: str
    key_class: str
    key_type: str
    sensitive: bool | None
    extractable: bool | None
    always_sensitive: bool | None
    never_extractable: bool | None
    token: bool
    usages: tuple[str, ...]


_USAGE_ATTRS = {
    Attribute.SIGN: "sign",
    Attribute.VERIFY: "verify",
    Attribute.ENCRYPT: "encrypt",
    Attribute.DECRYPT: "decrypt",
    Attribute.WRAP: "wrap",
    Attribute.UNWRAP: "unwrap",
    Attribute.DERIVE: "derive",
}


class TokenSession:
    """A logged-in session on one token; every call holds the module's lock."""

    def __init__(
        self, module: Pkcs11Module, label: str, serial: str, session: Any, pin_digest: bytes
    ) -> None:
        self.module = module
        self.label = label
        self.serial = serial
        self.session = session
        self._pin_digest = pin_digest
        self.is_open = True

    @property
    def lock(self) -> threading.RLock:
        return self.module.lock

    def check_pin(self, pin: str) -> None:
        if not hmac.compare_digest(_pin_digest(pin), self._pin_digest):
            raise errors.WrongPin(f"token '{self.label}': wrong PIN")

    def close(self) -> None:
        with self.lock:
            if self.is_open:
                with contextlib.suppress(p11e.PKCS11Error):
                    self.session.close()
                self.is_open = False
                self.module.forget(self)

    def what(self) -> str:
        return f"token '{self.label}'"

    # --- finding objects ------------------------------------------------------------------

    def _find(self, object_class: ObjectClass, label: str | None, key_id: bytes | None) -> list[Any]:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
        if label is not None:
            attrs[Attribute.LABEL] = label
        if key_id is not None:
            attrs[Attribute.ID] = key_id
        with self.lock, mapped_errors(self.what()):
            return list(self.session.get_objects(attrs))

    def has_object(self, label: str, object_class: ObjectClass = ObjectClass.PRIVATE_KEY) -> bool:
        return bool(self._find(object_class, label, None))

    def _one(self, object_class: ObjectClass, label: str | None, key_id: bytes | None) -> Any:
        objs = self._find(object_class, label, key_id)
        name = label if label is not None else (key_id or b"").hex()
        if not objs:
            raise errors.KeyNotFound(f"{self.what()}: no {object_class.name.lower()} '{name}'")
        if len(objs) > 1:
            raise errors.KeyNotFound(f"{self.what()}: more than one {object_class.name.lower()} '{name}'")
        return objs[0]

    def private_key(self, label: str | None = None, key_id: bytes | None = None) -> TokenPrivateKey:
        """The private key with this label or id, as a cryptography key object."""
        priv = self._one(ObjectClass.PRIVATE_KEY, label, key_id)
        with self.lock, mapped_errors(self.what()):
            kid = priv[Attribute.ID]
            key_type = priv.key_type
        pub = self._one(ObjectClass.PUBLIC_KEY, None, kid) if kid else self._one(
            ObjectClass.PUBLIC_KEY, label, None
        )
        public = self._public_from_object(pub)
        if key_type == KeyType.RSA:
            assert isinstance(public, rsa.RSAPublicKey)
            return TokenRSAPrivateKey(self, priv, public)
        if key_type == KeyType.EC:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            return TokenECPrivateKey(self, priv, public)
        raise errors.MechanismUnsupported(f"{self.what()}: key type {key_type} not supported")

    def secret_key(self, label: str) -> TokenSecretKey:
        return TokenSecretKey(self, self._one(ObjectClass.SECRET_KEY, label, None))

    def _public_from_object(self, pub: Any) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        with self.lock, mapped_errors(self.what()):
            if pub.key_type == KeyType.RSA:
                n = int.from_bytes(pub[Attribute.MODULUS], "big")
                e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
                return rsa.RSAPublicNumbers(e, n).public_key()
            params = pub[Attribute.EC_PARAMS]
            point = pub[Attribute.EC_POINT]
        oid = asn1core.ObjectIdentifier.load(params).dotted
        curve = _CURVES.get(oid)
        if curve is None:
            raise errors.UnsupportedAlgorithm(f"curve {oid} not supported")
        raw = asn1core.OctetString.load(point).native
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)

    def attributes(self, label: str, object_class: ObjectClass) -> KeyAttributes:
        obj = self._one(object_class, label, None)
        with self.lock, mapped_errors(self.what()):
            def get(attr: Attribute) -> bool | None:
                try:
                    return bool(obj[attr])
                except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
                    return None

            usages = tuple(name for attr, name in _USAGE_ATTRS.items() if get(attr))
            return KeyAttributes(
                label=label,
                key_class=object_class.name,
                key_type=obj.key_type.name,
                sensitive=get(Attribute.SENSITIVE),
                extractable=get(Attribute.EXTRACTABLE),
                always_sensitive=get(Attribute.ALWAYS_SENSITIVE),
                never_extractable=get(Attribute.NEVER_EXTRACTABLE),
                token=bool(obj[Attribute.TOKEN]),
                usages=usages,
            )

    # --- making keys ------------------------------------------------------------------------

    def generate_keypair(
        self,
        alg: KeyAlgorithm,
        label: str,
        key_id: bytes,
        *,
        sign: bool,
        decrypt: bool,
        derive: bool = False,
        store: bool = True,
    ) -> TokenPrivateKey:
        """A key pair made on the token: private half sensitive and never extractable."""
        private_template = {
            Attribute.TOKEN: store,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: sign,
            Attribute.DECRYPT: decrypt,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: derive,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
        }
        public_template = {
            Attribute.TOKEN: store,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: sign,
            Attribute.ENCRYPT: decrypt,
            Attribute.WRAP: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
        }
        with self.lock, mapped_errors(f"{self.what()}: generating {alg.value} key"):
            if alg.is_rsa:
                public_template[Attribute.MODULUS_BITS] = alg.bits
                public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
                self.session.generate_keypair(
                    KeyType.RSA,
                    alg.bits,
                    store=store,
                    public_template=public_template,
                    private_template=private_template,
                )
            else:
                oid = _CURVE_NAMES[alg.curve_name]
                params = self.session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: asn1core.ObjectIdentifier(oid).dump()},
                    local=True,
                )
                params.generate_keypair(
                    store=store, public_template=public_template, private_template=private_template
                )
        if store:
            self.module.changed()
        return self.private_key(label=label)

    def generate_aes_key(self, label: str, *, encrypt: bool = True) -> TokenSecretKey:
        """An AES-256 key on the token, sensitive, never extractable."""
        with self.lock, mapped_errors(f"{self.what()}: generating AES key"):
            key = self.session.generate_key(
                KeyType.AES,
                256,
                label=label,
                store=True,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.PRIVATE: True,
                    Attribute.ENCRYPT: encrypt,
                    Attribute.DECRYPT: encrypt,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                },
            )
        self.module.changed()
        return TokenSecretKey(self, key)

    def generate_hmac_key(self, label: str) -> TokenSecretKey:
        """A generic-secret key for HMAC-SHA256 on the token, sensitive, never extractable."""
        with self.lock, mapped_errors(f"{self.what()}: generating MAC key"):
            key = self.session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                label=label,
                store=True,
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.PRIVATE: True,
                    Attribute.SIGN: True,
                    Attribute.VERIFY: True,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                },
            )
        self.module.changed()
        return TokenSecretKey(self, key)

    def import_private_key(
        self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, label: str, key_id: bytes
    ) -> TokenPrivateKey:
        """Store a software private key on the token as a sensitive object (decrypt/derive)."""
        common = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
        }
        pub_common = {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
        }
        if isinstance(key, rsa.RSAPrivateKey):
            nums = key.private_numbers()
            pub = nums.public_numbers

            def b(i: int) -> bytes:
                return i.to_bytes((i.bit_length() + 7) // 8 or 1, "big")

            priv_attrs = {
                **common,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.DECRYPT: True,
                Attribute.SIGN: False,
                Attribute.UNWRAP: True,
                Attribute.MODULUS: b(pub.n),
                Attribute.PUBLIC_EXPONENT: b(pub.e),
                Attribute.PRIVATE_EXPONENT: b(nums.d),
                Attribute.PRIME_1: b(nums.p),
                Attribute.PRIME_2: b(nums.q),
                Attribute.EXPONENT_1: b(nums.dmp1),
                Attribute.EXPONENT_2: b(nums.dmq1),
                Attribute.COEFFICIENT: b(nums.iqmp),
            }
            pub_attrs = {
                **pub_common,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.ENCRYPT: True,
                Attribute.MODULUS: b(pub.n),
                Attribute.PUBLIC_EXPONENT: b(pub.e),
            }
        else:
            oid = _CURVE_NAMES[key.curve.name]
            params = asn1core.ObjectIdentifier(oid).dump()
            size = (key.curve.key_size + 7) // 8
            point = key.public_key().public_bytes(
                encoding=_serialization().Encoding.X962,
                format=_serialization().PublicFormat.UncompressedPoint,
            )
            priv_attrs = {
                **common,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.DERIVE: True,
                Attribute.SIGN: False,
                Attribute.EC_PARAMS: params,
                Attribute.VALUE: key.private_numbers().private_value.to_bytes(size, "big"),
            }
            pub_attrs = {
                **pub_common,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: params,
                Attribute.EC_POINT: asn1core.OctetString(point).dump(),
            }
        with self.lock, mapped_errors(f"{self.what()}: importing key"):
            self.session.create_object(priv_attrs)
            self.session.create_object(pub_attrs)
        self.module.changed()
        return self.private_key(label=label)

    def store_certificate(self, der: bytes, label: str, key_id: bytes, subject_der: bytes) -> None:
        """Store an X.509 certificate object whose CKA_ID matches its key, with the issuer and
        serial number that NSS (Thunderbird) needs to find the certificate of a recipient."""
        with self.lock, mapped_errors(f"{self.what()}: storing certificate"):
            self.session.create_object(_certificate_template(der, label, key_id, subject_der))
        self.module.changed()

    def repair_certificates(self) -> int:
        """Re-create certificate objects written without CKA_ISSUER or CKA_SERIAL_NUMBER (by
        earlier versions), keeping label, id and value; returns how many were repaired."""
        repaired = 0
        for obj in self._find(ObjectClass.CERTIFICATE, None, None):
            with self.lock, mapped_errors(f"{self.what()}: repairing certificates"):
                der = bytes(obj[Attribute.VALUE])
                issuer, serial = _issuer_serial(der)
                try:
                    present = bytes(obj[Attribute.ISSUER] or b"") == issuer and bytes(obj[Attribute.SERIAL_NUMBER] or b"") == serial
                except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
                    present = False
                if present:
                    continue
                label, key_id, subject = obj[Attribute.LABEL], bytes(obj[Attribute.ID] or b""), bytes(obj[Attribute.SUBJECT])
                # the new object first: a failure in between leaves two copies, never none
                self.session.create_object(_certificate_template(der, label, key_id, subject))
                obj.destroy()
                repaired += 1
        if repaired:
            self.module.changed()
        return repaired

    def certificates(self) -> list[tuple[str, bytes, bytes]]:
        """(label, id, DER) of every certificate object on the token."""
        out = []
        for obj in self._find(ObjectClass.CERTIFICATE, None, None):
            with self.lock, mapped_errors(self.what()):
                out.append((obj[Attribute.LABEL], obj[Attribute.ID], obj[Attribute.VALUE]))
        return out

    def private_key_labels(self) -> list[tuple[str, bytes]]:
        out = []
        for obj in self._find(ObjectClass.PRIVATE_KEY, None, None):
            with self.lock, mapped_errors(self.what()):
                out.append((obj[Attribute.LABEL], obj[Attribute.ID]))
        return out

    def destroy(self, label: str, object_class: ObjectClass) -> int:
        """Destroy every object of this class and label; returns how many."""
        objs = self._find(object_class, label, None)
        with self.lock, mapped_errors(f"{self.what()}: destroying {label}"):
            for obj in objs:
                obj.destroy()
        if objs:
            self.module.changed()
        return len(objs)

    def random(self, n: int) -> bytes:
        with self.lock, mapped_errors(self.what()):
            return bytes(self.session.generate_random(n * 8))

    def set_pin(self, old: str, new: str) -> None:
        with self.lock, mapped_errors(f"{self.what()}: changing PIN"):
            self.session.set_pin(old, new)
        self._pin_digest = _pin_digest(new)
        self.module.changed()


def _issuer_serial(der: bytes) -> tuple[bytes, bytes]:
    """The issuer Name and the serialNumber INTEGER of a certificate, both DER."""
    from asn1crypto import x509 as asn1x509

    tbs = asn1x509.Certificate.load(der)["tbs_certificate"]
    return tbs["issuer"].dump(), tbs["serial_number"].dump()


def _certificate_template(der: bytes, label: str, key_id: bytes, subject_der: bytes) -> dict[Any, Any]:
    issuer, serial = _issuer_serial(der)
    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.LABEL: label,
        Attribute.ID: key_id,
        Attribute.SUBJECT: subject_der,
        Attribute.ISSUER: issuer,
        Attribute.SERIAL_NUMBER: serial,
        Attribute.VALUE: der,
    }


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


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
                self._obj.decrypt(
                    blob[12:], mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(blob[:12], aad)
                )
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
                if prehashed or hash_name not in _HASH_SIGN_MECH:
                    prefix = _DIGEST_INFO.get(hash_name)
                    if prefix is None:
                        raise errors.UnsupportedAlgorithm(f"RSA signature with {hash_name}")
                    digest = data if prehashed else _digest(hash_name, data)
                    return bytes(self._obj.sign(prefix + digest, mechanism=Mechanism.RSA_PKCS))
                return bytes(self._obj.sign(data, mechanism=_HASH_SIGN_MECH[hash_name]))
            if isinstance(padding, pad.PSS) and hash_name in _PSS_MECH and not prehashed:
                mech, hmech, mgf = _PSS_MECH[hash_name]
                salt = padding._salt_length
                if not isinstance(salt, int):
                    salt = hashes.Hash(getattr(hashes, hash_name.upper())()).algorithm.digest_size
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
        if isinstance(alg, utils.Prehashed):
            digest = data
        else:
            digest = _digest(alg.name, data)
        with self._ts.lock, mapped_errors(f"{self._ts.what()}: ECDSA sign"):
            raw = bytes(self._obj.sign(digest, mechanism=Mechanism.ECDSA))
        half = len(raw) // 2
        return utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH with the null KDF on the token; the shared secret comes back for the X9.63 KDF."""
        point = peer_public_key.public_bytes(
            _serialization().Encoding.X962, _serialization().PublicFormat.UncompressedPoint
        )
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


def _digest(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


def oaep_decode(
    em: bytes, hash_alg: hashes.HashAlgorithm, mgf_alg: hashes.HashAlgorithm, label: bytes
) -> bytes:
    """EME-OAEP decoding (RFC 8017 §7.1.2 step 3), one error for every failure."""
    h_len = hash_alg.digest_size
    k = len(em)
    bad = errors.SignatureInvalid("RSA-OAEP decryption failed")
    if k < 2 * h_len + 2:
        raise bad
    l_hash = _digest(hash_alg.name, label)
    y, masked_seed, masked_db = em[0], em[1 : 1 + h_len], em[1 + h_len :]
    seed = _xor(masked_seed, _mgf1(masked_db, h_len, mgf_alg))
    db = _xor(masked_db, _mgf1(seed, k - h_len - 1, mgf_alg))
    # Decide once, after all checks, so the failure point does not leak through timing.
    ok = hmac.compare_digest(db[:h_len], l_hash) & (y == 0)
    rest = db[h_len:]
    sep = rest.find(b"\x01")
    ok = ok & (sep >= 0) & (rest[: max(sep, 0)].count(0) == max(sep, 0))
    if not ok:
        raise bad
    return rest[sep + 1 :]


def _mgf1(seed: bytes, length: int, alg: hashes.HashAlgorithm) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += _digest(alg.name, seed + counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))
