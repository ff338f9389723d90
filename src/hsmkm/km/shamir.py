"""Shamir secret sharing over GF(256) (the AES field, polynomial 0x11B).

Used to split the recovery token's PIN K-of-N among the recovery officers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from hsmkm import errors

SHARE_VERSION = 1


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        # multiply by the generator 3 in GF(256)
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)
        x &= 0xFF
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _tables()


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


@dataclass(frozen=True)
class Share:
    x: int
    y: bytes


def split(secret: bytes, k: int, n: int) -> list[Share]:
    """``n`` shares of ``secret``, any ``k`` of which rebuild it."""
    if not 1 <= k <= n <= 255:
        raise errors.BadInput(f"need 1 <= k <= n <= 255 (k={k}, n={n})")
    if not secret:
        raise errors.BadInput("cannot split an empty secret")
    coeffs = [[b] + [secrets.randbelow(256) for _ in range(k - 1)] for b in secret]
    shares = []
    for x in range(1, n + 1):
        y = bytearray()
        for poly in coeffs:
            acc = 0
            for c in reversed(poly):  # Horner
                acc = _mul(acc, x) ^ c
            y.append(acc)
        shares.append(Share(x, bytes(y)))
    return shares


def combine(shares: Sequence[Share]) -> bytes:
    """Lagrange interpolation at 0 of the given shares."""
    if not shares:
        raise errors.BadInput("no shares to combine")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise errors.BadInput("the same share was given twice")
    if any(not 1 <= x <= 255 for x in xs):
        raise errors.MalformedInput("share index out of range")
    length = len(shares[0].y)
    if any(len(s.y) != length for s in shares):
        raise errors.MalformedInput("shares of different lengths")
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = _mul(num, xj)
                den = _mul(den, xi ^ xj)
        weights.append(_div(num, den))
    out = bytearray(length)
    for w, share in zip(weights, shares):
        for idx, byte in enumerate(share.y):
            out[idx] ^= _mul(w, byte)
    return bytes(out)


def encode_share(share: Share) -> bytes:
    return bytes([SHARE_VERSION, share.x]) + share.y


def decode_share(data: bytes) -> Share:
    if len(data) < 3 or data[0] != SHARE_VERSION or data[1] == 0:
        raise errors.MalformedInput("not a share")
    return Share(data[1], data[2:])
