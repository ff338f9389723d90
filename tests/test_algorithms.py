"""The algorithm table: each fact agrees with an independent encoder (asn1crypto) and with
what cryptography signs and verifies."""

from __future__ import annotations

import hashlib

import pytest
from asn1crypto import algos, core
from cryptography.exceptions import InvalidSignature

from hsmkm.keys.algorithms import (
    Digest,
    KeyAlgorithm,
    KeyKind,
    SignatureScheme,
    digest_for_key,
    key_kind,
    signature_scheme,
)


@pytest.mark.parametrize("digest", list(Digest))
def test_digest_identifier_names_the_digest(digest: Digest) -> None:
    alg = algos.DigestAlgorithm.load(digest.algorithm_identifier)
    assert alg["algorithm"].native == digest.value
    assert Digest.of_oid(alg["algorithm"].dotted) is digest
    assert Digest.named(digest.value) is digest
    assert digest.size == hashlib.new(digest.value).digest_size
    assert digest.block_size == hashlib.new(digest.value).block_size
    assert (
        digest.micalg
        == {"sha1": "sha-1", "sha224": "sha-224", "sha256": "sha-256", "sha384": "sha-384", "sha512": "sha-512"}[
            digest.value
        ]
    )


@pytest.mark.parametrize("digest", list(Digest))
def test_digest_info_prefix_is_the_der_digest_info(digest: Digest) -> None:
    value = hashlib.new(digest.value, b"x").digest()
    info = algos.DigestInfo(
        {"digest_algorithm": {"algorithm": digest.value, "parameters": core.Null()}, "digest": value}
    )
    assert digest.digest_info_prefix + value == info.dump()


def test_unknown_names_and_oids_are_none() -> None:
    assert Digest.named("md5") is None
    assert Digest.of_oid("1.2.840.113549.2.5") is None


@pytest.mark.parametrize("kind", list(KeyKind))
@pytest.mark.parametrize("digest", list(Digest))
def test_signature_identifier_names_the_scheme(kind: KeyKind, digest: Digest) -> None:
    alg = algos.SignedDigestAlgorithm.load(SignatureScheme(kind, digest).algorithm_identifier)
    assert alg["algorithm"].native == f"{digest.value}_{'rsa' if kind is KeyKind.RSA else 'ecdsa'}"
    # NULL parameters for RSA, none for ECDSA
    assert (alg["parameters"].dump() == b"\x05\x00") if kind is KeyKind.RSA else alg["parameters"].native is None


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_each_key_signs_with_its_digest_and_verifies(alg: KeyAlgorithm) -> None:
    key = alg.generate()
    scheme = signature_scheme(key)
    assert scheme.digest is alg.digest is digest_for_key(key.public_key())
    assert scheme.kind is key_kind(key.public_key()) is (KeyKind.RSA if alg.is_rsa else KeyKind.EC)
    assert isinstance(alg.signature_hash, alg.digest.hash_class)
    signature = scheme.sign(key, b"data")
    scheme.verify(key.public_key(), signature, b"data")
    with pytest.raises(InvalidSignature):
        scheme.verify(key.public_key(), signature, b"other data")


def test_p384_uses_sha384_and_the_rest_sha256() -> None:
    assert {a: a.digest for a in KeyAlgorithm} == {
        KeyAlgorithm.RSA2048: Digest.SHA256,
        KeyAlgorithm.RSA3072: Digest.SHA256,
        KeyAlgorithm.P256: Digest.SHA256,
        KeyAlgorithm.P384: Digest.SHA384,
    }


def test_builders_get_a_sha2_hash_and_sha1_is_refused() -> None:
    from hsmkm import errors

    assert all(isinstance(d.builder_hash(), d.hash_class) for d in Digest if d is not Digest.SHA1)
    with pytest.raises(errors.UnsupportedAlgorithm):
        Digest.SHA1.builder_hash()
