"""EME-OAEP decoding in software, for tokens that do RSA-OAEP only with SHA-1."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes

from hsmkm import errors


def digest_of(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


def oaep_decode(em: bytes, hash_alg: hashes.HashAlgorithm, mgf_alg: hashes.HashAlgorithm, label: bytes) -> bytes:
    """EME-OAEP decoding (RFC 8017 §7.1.2 step 3), one error for every failure."""
    h_len = hash_alg.digest_size
    k = len(em)
    bad = errors.SignatureInvalid("RSA-OAEP decryption failed")
    if k < 2 * h_len + 2:
        raise bad
    l_hash = digest_of(hash_alg.name, label)
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
        out += digest_of(alg.name, seed + counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))
