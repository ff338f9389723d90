"""CSR attributes (RFC 7030 §4.5, its ASN.1 as RFC 8951 corrects it): what the KM wants in a CSR.

CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID; AttrOrOID ::= CHOICE { oid OBJECT
IDENTIFIER, attribute Attribute }. The KM's answer names:

- the signature algorithm per accepted key family (bare OIDs, as RFC 7030 §4.5.2's example),
- the key types it accepts: id-ecPublicKey with the curves as values, rsaEncryption with the
  modulus sizes as INTEGER values (the form the later CSR-attributes clarification uses),
- the e-mail address: emailAddress (bare OID) and extensionRequest naming subjectAltName,
- for serverkeygen, id-aa-decryptKeyID (bare OID): the identifier of the key the client
  derives from its code, which the KM's encrypted key part names (RFC 7030 §4.4.1.2).

No challengePassword: the code travels as HTTP Basic over TLS (RFC 7030 §3.2.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import core

from hsmkm import errors
from hsmkm.der import der_int, der_oid, seq, tlv
from hsmkm.keys.algorithms import KeyAlgorithm

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3"
OID_SHA256_RSA = "1.2.840.113549.1.1.11"
OID_EMAIL_ADDRESS = "1.2.840.113549.1.9.1"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_DECRYPT_KEY_ID = "1.2.840.113549.1.9.16.2.37"  # id-aa-decryptKeyID, RFC 7030 §4.4.1.1
OID_SECP256R1 = "1.2.840.10045.3.1.7"
OID_SECP384R1 = "1.3.132.0.34"

MAX_SIZE = 64 << 10
MAX_ITEMS = 64

_CURVES = {KeyAlgorithm.P256: OID_SECP256R1, KeyAlgorithm.P384: OID_SECP384R1}
_SIGNATURES = {
    KeyAlgorithm.P256: OID_ECDSA_SHA256,
    KeyAlgorithm.P384: OID_ECDSA_SHA384,
    KeyAlgorithm.RSA2048: OID_SHA256_RSA,
    KeyAlgorithm.RSA3072: OID_SHA256_RSA,
}


class _Values(core.SetOf):
    _child_spec = core.Any


class _Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", _Values)]  # noqa: RUF012 (asn1crypto reads it)


class _AttrOrOid(core.Choice):
    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", _Attribute)]  # noqa: RUF012 (asn1crypto reads it)


class _CsrAttrs(core.SequenceOf):
    _child_spec = _AttrOrOid


@dataclass(frozen=True)
class CsrAttrs:
    """A decoded CsrAttrs: the bare OIDs and the attributes (type, each value's DER), in order."""

    oids: list[str] = field(default_factory=list)
    attributes: list[tuple[str, list[bytes]]] = field(default_factory=list)

    def values_of(self, oid: str) -> list[bytes]:
        return [v for t, vs in self.attributes if t == oid for v in vs]

    def key_algorithms(self) -> list[KeyAlgorithm]:
        """The key types named (curves of id-ecPublicKey, sizes of rsaEncryption; DER order)."""
        found: list[KeyAlgorithm] = []
        by_curve = {der_oid(o): a for a, o in _CURVES.items()}
        by_bits = {der_int(a.bits): a for a in KeyAlgorithm if a.is_rsa}
        for t, values in self.attributes:
            table = by_curve if t == OID_EC_PUBLIC_KEY else by_bits if t == OID_RSA_ENCRYPTION else {}
            found += [table[v] for v in values if v in table]
        return found


def encode(key_algorithms: Sequence[KeyAlgorithm], server_keygen: bool = True) -> bytes:
    """The KM's CsrAttrs DER for the key types it accepts (signing keys in simpleenroll)."""
    if not key_algorithms:
        raise errors.BadInput("csrattrs: no key algorithm")
    items: list[bytes] = []
    for sig in dict.fromkeys(_SIGNATURES[a] for a in key_algorithms):
        items.append(der_oid(sig))
    curves = [der_oid(_CURVES[a]) for a in key_algorithms if not a.is_rsa]
    if curves:
        items.append(_attribute(OID_EC_PUBLIC_KEY, curves))
    sizes = [der_int(a.bits) for a in key_algorithms if a.is_rsa]
    if sizes:
        items.append(_attribute(OID_RSA_ENCRYPTION, sizes))
    items.append(der_oid(OID_EMAIL_ADDRESS))
    items.append(_attribute(OID_EXTENSION_REQUEST, [der_oid(OID_SUBJECT_ALT_NAME)]))
    if server_keygen:
        items.append(der_oid(OID_DECRYPT_KEY_ID))
    return seq(*items)


def _attribute(oid: str, values: list[bytes]) -> bytes:
    return seq(der_oid(oid), tlv(0x31, b"".join(sorted(values))))  # DER sorts a SET OF


def decode(der: bytes) -> CsrAttrs:
    """A CsrAttrs body (DER, already base64-decoded); bounded in size and count."""
    what = "the CSR attributes"
    if len(der) > MAX_SIZE:
        raise errors.MalformedInput(f"{what}: larger than {MAX_SIZE} octets")
    with errors.malformed(what):
        parsed = _CsrAttrs.load(der, strict=True)
        if len(parsed) > MAX_ITEMS:
            raise errors.MalformedInput(f"{what}: more than {MAX_ITEMS} items")
        out = CsrAttrs()
        for item in parsed:
            if item.name == "oid":
                out.oids.append(item.chosen.dotted)
            else:
                values = [v.dump() for v in item.chosen["values"]]
                if not values:
                    raise errors.MalformedInput(f"{what}: an attribute without values")
                for v in values:
                    core.Asn1Value.load(v, strict=True)  # each value one whole TLV
                out.attributes.append((item.chosen["type"].dotted, values))
        return out
