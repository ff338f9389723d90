"""Shamir sharing over GF(256): any K of N rebuild; fewer say nothing about the secret."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.km import shamir


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), n=st.integers(1, 7), data=st.data())
def test_any_k_of_n_rebuild_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    shares = shamir.split(secret, k, n)
    for subset in itertools.combinations(shares, k):
        assert shamir.combine(list(subset)) == secret
    picked = data.draw(st.permutations(shares))[: data.draw(st.integers(k, n))]
    assert shamir.combine(picked) == secret


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=1, max_size=16), candidate=st.binary(min_size=16, max_size=16), k=st.integers(2, 5))
def test_k_minus_1_shares_fit_every_candidate_secret(secret: bytes, candidate: bytes, k: int) -> None:
    """Perfect secrecy: with K-1 shares, any candidate secret is consistent with a polynomial."""
    candidate = candidate[: len(secret)]
    shares = shamir.split(secret, k, k + 1)[: k - 1]
    fake = shamir.Share(0, candidate)  # the point (0, candidate)
    # Interpolating the K-1 shares plus (0, candidate) defines a degree K-1 polynomial whose
    # value at 0 is the candidate: the shares cannot rule it out.
    xs = [s.x for s in shares]
    assert 0 not in xs
    # Evaluate that polynomial at a fresh x and check it round-trips through combine.
    rebuilt = _interpolate([(0, candidate)] + [(s.x, s.y) for s in shares], len(candidate))
    assert shamir.combine([shamir.Share(x, y) for x, y in rebuilt]) == candidate
    assert fake.y == candidate


def _interpolate(points: list[tuple[int, bytes]], length: int) -> list[tuple[int, bytes]]:
    """Shares at x = 1..K of the polynomial through ``points`` (one of which is at x=0)."""
    k = len(points)
    out = []
    for x in range(200, 200 + k):
        y = bytearray(length)
        for i, (xi, yi) in enumerate(points):
            num, den = 1, 1
            for j, (xj, _) in enumerate(points):
                if i != j:
                    num = shamir._mul(num, x ^ xj)
                    den = shamir._mul(den, xi ^ xj)
            w = shamir._div(num, den)
            for idx in range(length):
                y[idx] ^= shamir._mul(w, yi[idx])
        out.append((x, bytes(y)))
    return out


def test_fewer_than_k_shares_do_not_rebuild() -> None:
    secret = b"correct horse battery staple 123"
    shares = shamir.split(secret, 3, 5)
    assert shamir.combine(shares[:2]) != secret
    assert shamir.combine(shares[:3]) == secret


def test_share_encoding_round_trips_and_rejects_garbage() -> None:
    share = shamir.split(b"pin", 2, 3)[1]
    assert shamir.decode_share(shamir.encode_share(share)) == share
    with pytest.raises(errors.MalformedInput):
        shamir.decode_share(b"\x09\x01abc")
    with pytest.raises(errors.BadInput):
        shamir.combine([share, share])
    with pytest.raises(errors.BadInput):
        shamir.split(b"pin", 4, 3)


def test_field_arithmetic_is_a_field() -> None:
    for a in range(1, 256):
        assert shamir._mul(a, shamir._div(1, a)) == 1
