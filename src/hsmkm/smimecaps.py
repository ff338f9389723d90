"""S/MIME capabilities (RFC 8551 §2.5.2, RFC 4262): what a correspondent's client reads, as
client profiles, as the SMIMECapabilities value, and the per-recipient choice of §2.7."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from asn1crypto import core

from hsmkm import errors
from hsmkm.der import der_oid, seq
from hsmkm.keys.algorithms import (
    AES_CBC_OIDS,
    AES_GCM_OIDS,
    AES_WRAP_OIDS,
    ECDH_STD_SCHEMES,
    RSA_ENCRYPTION_OID,
    RSA_OAEP_OID,
    Digest,
)

OID_SMIME_CAPABILITIES = "1.2.840.113549.1.9.15"  # the attribute and the extension (RFC 4262)
AES256_GCM = AES_GCM_OIDS[32]
AES256_CBC = AES_CBC_OIDS[32]
RSA_OAEP = RSA_OAEP_OID
RSA_ENCRYPTION = RSA_ENCRYPTION_OID
ECDH_SHA256_KDF = ECDH_STD_SCHEMES[Digest.SHA256]  # dhSinglePass-stdDH-sha256kdf-scheme
AES256_WRAP = AES_WRAP_OIDS[32]


class ClientProfile(str, Enum):
    """What the mail clients a user reads with can decrypt."""

    MODERN = "modern"  # AES-256-GCM AuthEnvelopedData, RSA-OAEP (openssl 3, hsmkm)
    COMPAT = "compat"  # AES-256-CBC EnvelopedData, RSA PKCS#1 v1.5 (NSS 3.87, gpgsm 2.2, Outlook)


class Cipher(str, Enum):
    AES256_GCM = "aes256-gcm"
    AES256_CBC = "aes256-cbc"


class Transport(str, Enum):
    RSA_OAEP = "rsa-oaep"
    RSA_PKCS1V15 = "rsa-pkcs1v15"


# Best first, as RFC 8551 §2.5.2 orders them.
PROFILE_CAPABILITIES: dict[ClientProfile, tuple[str, ...]] = {
    ClientProfile.MODERN: (AES256_GCM, AES256_CBC, RSA_OAEP, RSA_ENCRYPTION, ECDH_SHA256_KDF),
    ClientProfile.COMPAT: (AES256_CBC, RSA_ENCRYPTION, ECDH_SHA256_KDF),
}
HSMKM_READS = PROFILE_CAPABILITIES[ClientProfile.MODERN]


def encode(oids: Sequence[str]) -> bytes:
    """The SMIMECapabilities SEQUENCE (ECDH carries its key wrap as the parameter, RFC 5753 §7.2)."""
    parts = []
    for oid in oids:
        if oid == ECDH_SHA256_KDF:
            parts.append(seq(der_oid(oid), seq(der_oid(AES256_WRAP))))
        elif oid == RSA_ENCRYPTION:
            parts.append(seq(der_oid(oid), b"\x05\x00"))
        else:
            parts.append(seq(der_oid(oid)))
    return seq(*parts)


class _Capability(core.Sequence):
    _fields = [("capability_id", core.ObjectIdentifier), ("parameters", core.Any, {"optional": True})]


class _Capabilities(core.SequenceOf):
    _child_spec = _Capability


def decode(der: bytes) -> list[str]:
    """The capability OIDs of an SMIMECapabilities value, in the sender's order."""
    try:
        return [c["capability_id"].dotted for c in _Capabilities.load(der, strict=True)]
    except (ValueError, TypeError, KeyError):
        raise errors.MalformedInput("SMIMECapabilities: not a list of capabilities") from None


@dataclass(frozen=True)
class Choice:
    """The content cipher for everyone and the key transport per (RSA) recipient."""

    cipher: Cipher
    transports: tuple[Transport, ...]
    notes: tuple[str, ...] = ()


def choose(
    known: Sequence[Sequence[str] | None],
    default: ClientProfile = ClientProfile.MODERN,
    cipher: Cipher | None = None,
    transport: Transport | None = None,
    names: Sequence[str] | None = None,
) -> Choice:
    """RFC 8551 §2.7: the strongest content cipher every recipient reads and, per recipient,
    the strongest key transport it reads. ``known[i]`` is recipient i's capabilities, None when
    nothing is known (then the ``default`` profile is assumed). ``cipher``/``transport``
    override the choice."""
    caps = [list(k) if k is not None else list(PROFILE_CAPABILITIES[default]) for k in known]
    notes: list[str] = []
    if cipher is None:
        if all(AES256_GCM in c for c in caps):
            cipher = Cipher.AES256_GCM
        else:
            cipher = Cipher.AES256_CBC
            for i, c in enumerate(caps):
                if AES256_CBC not in c and AES256_GCM not in c:
                    who = names[i] if names else f"recipient {i + 1}"
                    notes.append(
                        f"{who} announces neither AES-256-GCM nor AES-256-CBC; sent AES-256-CBC, "
                        "which RFC 8551 agents read"
                    )
    transports = tuple(
        transport if transport is not None else (Transport.RSA_OAEP if RSA_OAEP in c else Transport.RSA_PKCS1V15)
        for c in caps
    )
    return Choice(cipher, transports, tuple(notes))
