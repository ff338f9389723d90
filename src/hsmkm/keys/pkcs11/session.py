"""A logged-in session on one token: finding, making and destroying its objects."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
from typing import TYPE_CHECKING, Any

import pkcs11.exceptions as p11e
from asn1crypto import core as asn1core
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.pkcs11 import data_objects
from hsmkm.keys.pkcs11.errmap import mapped_errors
from hsmkm.keys.pkcs11.keyobjects import (
    TokenECPrivateKey,
    TokenPrivateKey,
    TokenRSAPrivateKey,
    TokenSecretKey,
)
from hsmkm.keys.pkcs11.templates import (
    CURVE_NAMES,
    CURVES,
    certificate_template,
    imported_key_templates,
    issuer_serial,
)
from hsmkm.keys.token import DataObjectRef, KeyAttributes, ObjectKind

if TYPE_CHECKING:
    from hsmkm.keys.pkcs11.registry import Pkcs11Module


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

    def __init__(self, module: Pkcs11Module, label: str, serial: str, session: Any, pin_digest: bytes) -> None:
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
        if not hmac.compare_digest(pin_digest(pin), self._pin_digest):
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

    def _find(self, kind: ObjectKind | ObjectClass, label: str | None, key_id: bytes | None) -> list[Any]:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: _object_class(kind)}
        if label is not None:
            attrs[Attribute.LABEL] = label
        if key_id is not None:
            attrs[Attribute.ID] = key_id
        with self.lock, mapped_errors(self.what()):
            return list(self.session.get_objects(attrs))

    def has_object(self, label: str, kind: ObjectKind | ObjectClass = ObjectKind.PRIVATE_KEY) -> bool:
        return bool(self._find(kind, label, None))

    def _one(self, kind: ObjectKind | ObjectClass, label: str | None, key_id: bytes | None) -> Any:
        object_class = _object_class(kind)
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
        pub = self._one(ObjectClass.PUBLIC_KEY, None, kid) if kid else self._one(ObjectClass.PUBLIC_KEY, label, None)
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
        curve = CURVES.get(oid)
        if curve is None:
            raise errors.UnsupportedAlgorithm(f"curve {oid} not supported")
        raw = asn1core.OctetString.load(point).native
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)

    def attributes(self, label: str, kind: ObjectKind | ObjectClass) -> KeyAttributes:
        object_class = _object_class(kind)
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
                oid = CURVE_NAMES[alg.curve_name]
                params = self.session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: asn1core.ObjectIdentifier(oid).dump()},
                    local=True,
                )
                params.generate_keypair(store=store, public_template=public_template, private_template=private_template)
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
        priv_attrs, pub_attrs = imported_key_templates(key, label, key_id)
        with self.lock, mapped_errors(f"{self.what()}: importing key"):
            self.session.create_object(priv_attrs)
            self.session.create_object(pub_attrs)
        self.module.changed()
        return self.private_key(label=label)

    def store_certificate(self, der: bytes, label: str, key_id: bytes, subject_der: bytes) -> None:
        """Store an X.509 certificate object whose CKA_ID matches its key, with the issuer and
        serial number that NSS (Thunderbird) needs to find the certificate of a recipient."""
        with self.lock, mapped_errors(f"{self.what()}: storing certificate"):
            self.session.create_object(certificate_template(der, label, key_id, subject_der))
        self.module.changed()

    def repair_certificates(self) -> int:
        """Re-create certificate objects written without CKA_ISSUER or CKA_SERIAL_NUMBER (by
        earlier versions), keeping label, id and value; returns how many were repaired."""
        repaired = 0
        for obj in self._find(ObjectClass.CERTIFICATE, None, None):
            with self.lock, mapped_errors(f"{self.what()}: repairing certificates"):
                der = bytes(obj[Attribute.VALUE])
                issuer, serial = issuer_serial(der)
                try:
                    present = (
                        bytes(obj[Attribute.ISSUER] or b"") == issuer
                        and bytes(obj[Attribute.SERIAL_NUMBER] or b"") == serial
                    )
                except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
                    present = False
                if present:
                    continue
                label, key_id, subject = (
                    obj[Attribute.LABEL],
                    bytes(obj[Attribute.ID] or b""),
                    bytes(obj[Attribute.SUBJECT]),
                )
                # the new object first: a failure in between leaves two copies, never none
                self.session.create_object(certificate_template(der, label, key_id, subject))
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

    def destroy(self, label: str, kind: ObjectKind | ObjectClass) -> int:
        """Destroy every object of this kind and label; returns how many."""
        objs = self._find(kind, label, None)
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
        self._pin_digest = pin_digest(new)
        self.module.changed()

    # --- small private data objects ---------------------------------------------------------

    def data_create(self, application: str, label: str) -> data_objects.DataObject:
        return data_objects.create(self, application, label)

    def data_find(self, application: str) -> list[DataObjectRef]:
        found: list[DataObjectRef] = list(data_objects.find(self, application))
        return found

    def data_reread(self, obj: DataObjectRef) -> data_objects.DataObject | None:
        return data_objects.reread(self, _data(obj))

    def data_relabel(self, obj: DataObjectRef, label: str) -> data_objects.DataObject:
        return data_objects.relabel(self, _data(obj), label)

    def data_destroy(self, obj: DataObjectRef) -> None:
        data_objects.destroy(self, _data(obj))


def _data(obj: DataObjectRef) -> data_objects.DataObject:
    if not isinstance(obj, data_objects.DataObject):
        raise TypeError("not a data object of this backend")
    return obj


def _object_class(kind: ObjectKind | ObjectClass) -> ObjectClass:
    return kind if isinstance(kind, ObjectClass) else ObjectClass[kind.name]


def pin_digest(pin: str) -> bytes:
    # Kept only to notice a different PIN for an already-open session; never stored.
    return hashlib.sha256(b"hsmkm-pin-check\x00" + pin.encode()).digest()
