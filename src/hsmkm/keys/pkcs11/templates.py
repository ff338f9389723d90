"""Attribute templates for the objects hsmkm makes on a token."""

from __future__ import annotations

from typing import Any

import pkcs11
from asn1crypto import core as asn1core
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, ObjectClass

CURVES: dict[str, ec.EllipticCurve] = {
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
    "1.3.132.0.35": ec.SECP521R1(),
}
CURVE_NAMES = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34"}


def imported_key_templates(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, label: str, key_id: bytes
) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The private and public objects of a software key stored as a sensitive object (decrypt/derive)."""
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
        oid = CURVE_NAMES[key.curve.name]
        params = asn1core.ObjectIdentifier(oid).dump()
        size = (key.curve.key_size + 7) // 8
        point = key.public_key().public_bytes(
            encoding=serialization.Encoding.X962,
            format=serialization.PublicFormat.UncompressedPoint,
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
    return priv_attrs, pub_attrs


def issuer_serial(der: bytes) -> tuple[bytes, bytes]:
    """The issuer Name and the serialNumber INTEGER of a certificate, both DER."""
    from asn1crypto import x509 as asn1x509

    tbs = asn1x509.Certificate.load(der)["tbs_certificate"]
    return tbs["issuer"].dump(), tbs["serial_number"].dump()


def certificate_template(der: bytes, label: str, key_id: bytes, subject_der: bytes) -> dict[Any, Any]:
    issuer, serial = issuer_serial(der)
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
