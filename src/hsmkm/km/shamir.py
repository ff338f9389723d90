"""Shamir secret sharing over GF(256) (the AES field, polynomial 0x11B).

Used to split the recovery token's PIN K-of-N among the recovery officers. Each byte of the
secret is the constant term of its own random polynomial of degree K-1; share i holds the
polynomials' values at x = i. Any K shares rebuild the secret by Lagrange interpolation at
0; K-1 shares are consistent with every candidate secret, so they say nothing about it.
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


def split(secret: bytes, k: int, n: int, rng: RandomBits = _SYSTEM_RANDOM) -> list[Share]:
    """``n`` shares of ``secret``, any ``k`` of which rebuild it."""
    if not 1 <= k <= n <= MAX_SHARES:
        raise errors.BadInput(f"Shamir split needs 1 <= k <= n <= 255 (k={k}, n={n})")
    if not secret:
        raise errors.BadInput("cannot split an empty secret")
    polys = [[byte] + [rng.getrandbits(8) for _ in range(k - 1)] for byte in secret]
    return [Share(x, bytes(_eval(poly, x) for poly in polys)) for x in range(1, n + 1)]


def combine(shares: Sequence[Share]) -> bytes:
    """The secret: Lagrange interpolation at 0 of the given shares (give at least K)."""
    if not shares:
        raise errors.BadInput("no shares to combine")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise errors.BadInput("the same share was given twice")
    length = len(shares[0].y)
    if any(len(s.y) != length for s in shares):
        raise errors.MalformedInput("shares of different lengths do not belong together")
    out = bytearray(length)
    for xi, share in zip(xs, shares):
        # weight of share i at 0: prod x_j / (x_i - x_j); subtraction is XOR in GF(2^8)
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = _mul(num, xj)
                den = _mul(den, xi ^ xj)
        w = _div(num, den)
        for idx, byte in enumerate(share.y):
            out[idx] ^= _mul(w, byte)
    return bytes(out)


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
