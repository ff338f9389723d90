"""Shamir secret sharing over GF(256) (the AES field, polynomial 0x11B).

Used to split each archive record's key K-of-N among the recovery officers (and, for a KM
of the first release, the recovery token's PIN). Each byte of the secret is the constant
term of its own random polynomial of degree K-1; share i holds the polynomials' values at
x = i. Any K shares rebuild the secret by Lagrange interpolation at 0; K-1 shares are
consistent with every candidate secret, so they say nothing about it.

Redistribution (``reshare`` and ``combine_subshares``) moves a secret to a new officer set
or quorum without anyone rebuilding it: each of K current holders splits its own share
afresh for the new indices, and each new holder combines the K sub-shares it receives with
the Lagrange weights of the old indices. The new shares lie on a fresh random polynomial
with the same constant term; old and new shares do not mix.

Whole shares are handled as byte strings: multiplying by a constant is one ``translate``
through a 256-byte table, so the per-byte loops run in C.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hsmkm import errors

SHARE_VERSION = 1
MAX_SHARES = 255


class RandomBits(Protocol):
    """A source of random bits: ``secrets.SystemRandom()``, or a seeded ``random.Random`` in tests."""

    def getrandbits(self, k: int, /) -> int: ...


_SYSTEM_RANDOM = secrets.SystemRandom()  # what the secrets module itself draws from


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        # multiply by the generator 3 (x + 1) and reduce by 0x11B
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)
        x &= 0xFF
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _tables()


def _mul(a: int, b: int) -> int:
    """Product in GF(256)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    """Quotient in GF(256)."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


# _MUL_TABLES[c][b] = c * b: ``v.translate(_MUL_TABLES[c])`` multiplies every byte of v by c.
_MUL_TABLES = [bytes(_mul(c, b) for b in range(256)) for c in range(256)]


def _scale(v: bytes, c: int) -> bytes:
    return v.translate(_MUL_TABLES[c])


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _eval_vec(coefficients: Sequence[bytes], x: int) -> bytes:
    """Every byte's polynomial (constant vector first) at ``x``, by Horner's rule."""
    acc = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = _xor(_scale(acc, x), c)
    return acc


def lagrange_weights(xs: Sequence[int]) -> list[int]:
    """Weights w_i with f(0) = sum w_i f(x_i) for any polynomial of degree < len(xs)."""
    if len(set(xs)) != len(xs):
        raise errors.BadInput("the same share was given twice")
    out = []
    for xi in xs:
        # prod x_j / (x_i - x_j); subtraction is XOR in GF(2^8)
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = _mul(num, xj)
                den = _mul(den, xi ^ xj)
        out.append(_div(num, den))
    return out


def _eval(poly: Sequence[int], x: int) -> int:
    """The polynomial (constant term first) at ``x``, by Horner's rule."""
    acc = 0
    for c in reversed(poly):
        acc = _mul(acc, x) ^ c
    return acc


@dataclass(frozen=True)
class Share:
    """One officer's share: the polynomials' values ``y`` at index ``x`` (1..255)."""

    x: int
    y: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.x <= MAX_SHARES:
            raise errors.MalformedInput(f"share index {self.x} is outside 1..255")

    def __repr__(self) -> str:
        # a share is secret material: keep it out of logs and tracebacks
        return f"Share(x={self.x}, y=<{len(self.y)} bytes>)"


def split_at(secret: bytes, k: int, xs: Sequence[int], rng: RandomBits = _SYSTEM_RANDOM) -> list[Share]:
    """Shares of ``secret`` at the indices ``xs``, any ``k`` of which rebuild it."""
    if not 1 <= k <= len(xs) <= MAX_SHARES or len(set(xs)) != len(xs):
        raise errors.BadInput(f"Shamir split needs 1 <= k <= n <= 255 distinct indices (k={k}, n={len(xs)})")
    if not secret:
        raise errors.BadInput("cannot split an empty secret")
    size = len(secret)
    coefficients = [secret] + [rng.getrandbits(8 * size).to_bytes(size, "little") for _ in range(k - 1)]
    return [Share(x, _eval_vec(coefficients, x)) for x in xs]


def split(secret: bytes, k: int, n: int, rng: RandomBits = _SYSTEM_RANDOM) -> list[Share]:
    """``n`` shares of ``secret`` (indices 1..n), any ``k`` of which rebuild it."""
    if not 1 <= k <= n <= MAX_SHARES:
        raise errors.BadInput(f"Shamir split needs 1 <= k <= n <= 255 (k={k}, n={n})")
    return split_at(secret, k, range(1, n + 1), rng)


def combine(shares: Sequence[Share]) -> bytes:
    """The secret: Lagrange interpolation at 0 of the given shares (give at least K)."""
    if not shares:
        raise errors.BadInput("no shares to combine")
    length = len(shares[0].y)
    if any(len(s.y) != length for s in shares):
        raise errors.MalformedInput("shares of different lengths do not belong together")
    weights = lagrange_weights([s.x for s in shares])
    out = bytes(length)
    for w, share in zip(weights, shares, strict=True):
        out = _xor(out, _scale(share.y, w))
    return out


def reshare(share: Share, k_new: int, new_xs: Sequence[int], rng: RandomBits = _SYSTEM_RANDOM) -> list[Share]:
    """One holder's part of a redistribution: its own share split afresh for the new indices."""
    return split_at(share.y, k_new, new_xs, rng)


def combine_subshares(new_x: int, subshares: Sequence[tuple[int, bytes]]) -> Share:
    """A new holder's share from (old index, sub-share) of exactly K old holders."""
    if not subshares:
        raise errors.BadInput("no sub-shares to combine")
    length = len(subshares[0][1])
    if any(len(y) != length for _, y in subshares):
        raise errors.MalformedInput("sub-shares of different lengths do not belong together")
    weights = lagrange_weights([x for x, _ in subshares])
    out = bytes(length)
    for w, (_, y) in zip(weights, subshares, strict=True):
        out = _xor(out, _scale(y, w))
    return Share(new_x, out)


def encode_share(share: Share) -> bytes:
    """The share as bytes: version, index, values."""
    return bytes([SHARE_VERSION, share.x]) + share.y


def decode_share(data: bytes) -> Share:
    """A share from ``encode_share``'s bytes."""
    if len(data) < 3:
        raise errors.MalformedInput("not a Shamir share (too short)")
    if data[0] != SHARE_VERSION:
        raise errors.MalformedInput(f"Shamir share version {data[0]} is not supported")
    return Share(data[1], bytes(data[2:]))
