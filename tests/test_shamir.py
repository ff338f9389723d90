"""Shamir sharing over GF(256): any K of N rebuild; fewer say nothing about the secret."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.km import shamir


def _interpolate(points: list[tuple[int, int]]) -> list[int]:
    """Coefficients (constant first) of the lowest-degree polynomial through ``points``."""
    coeffs = [0] * len(points)
    for i, (xi, yi) in enumerate(points):
        # basis polynomial l_i(x) = prod_{j != i} (x - x_j) / (x_i - x_j), built term by term
        basis = [1]
        den = 1
        for j, (xj, _) in enumerate(points):
            if i == j:
                continue
            basis = [a ^ shamir._mul(b, xj) for a, b in zip([0, *basis], [*basis, 0], strict=True)]
            den = shamir._mul(den, xi ^ xj)
        scale = shamir._div(yi, den)
        coeffs = [c ^ shamir._mul(scale, b) for c, b in zip(coeffs, basis, strict=True)]
    return coeffs


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), n=st.integers(1, 7), data=st.data())
def test_any_k_of_n_rebuild_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    shares = shamir.split(secret, k, n)
    assert [s.x for s in shares] == list(range(1, n + 1))
    for subset in itertools.combinations(shares, k):
        assert shamir.combine(list(subset)) == secret
    picked = data.draw(st.permutations(shares))[: data.draw(st.integers(k, n))]
    assert shamir.combine(picked) == secret


def test_large_n_and_k() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 200, 255)
    assert shamir.combine(random.Random(1).sample(shares, 200)) == secret


@settings(max_examples=80, deadline=None)
@given(secret=st.binary(min_size=1, max_size=12), data=st.data(), k=st.integers(2, 6), n_extra=st.integers(0, 3))
def test_k_minus_1_shares_fit_every_candidate_secret(secret: bytes, data: st.DataObject, k: int, n_extra: int) -> None:
    """Perfect secrecy: K-1 shares plus (0, any candidate) lie on a polynomial of degree < K."""
    candidate = data.draw(st.binary(min_size=len(secret), max_size=len(secret)))
    shares = shamir.split(secret, k, k + n_extra)
    held = data.draw(st.permutations(shares))[: k - 1]
    fresh_x = data.draw(st.sampled_from([x for x in range(1, 256) if x not in {s.x for s in held}]))
    forged = bytearray()
    for idx in range(len(secret)):
        points = [(0, candidate[idx])] + [(s.x, s.y[idx]) for s in held]
        poly = _interpolate(points)
        assert len(poly) <= k  # degree at most K-1: a polynomial split() could have drawn
        assert poly[0] == candidate[idx]
        assert all(shamir._eval(poly, x) == y for x, y in points)
        forged.append(shamir._eval(poly, fresh_x))
    # The held shares and one more point of that polynomial make a valid K-set for the candidate.
    assert shamir.combine([*held, shamir.Share(fresh_x, bytes(forged))]) == candidate


@pytest.mark.parametrize("secret_byte", [0, 1, 0x53, 0xFF])
def test_one_share_of_two_is_uniform_for_every_secret(secret_byte: int) -> None:
    """K=2: as the random coefficient runs over GF(256), each share value occurs exactly once."""

    class Fixed:
        def __init__(self, value: int) -> None:
            self.value = value

        def getrandbits(self, k: int) -> int:
            return self.value

    for x_index in (0, 1, 4):
        seen = Counter(shamir.split(bytes([secret_byte]), 2, 5, rng=Fixed(a))[x_index].y[0] for a in range(256))
        assert set(seen) == set(range(256)) and set(seen.values()) == {1}


def test_fewer_than_k_shares_do_not_rebuild() -> None:
    rng = random.Random(7)
    secret = b"correct horse battery staple 123"
    misses = 0
    for _ in range(200):
        shares = shamir.split(secret, 3, 5, rng=rng)
        pair = rng.sample(shares, 2)
        misses += shamir.combine(pair) != secret
        assert shamir.combine(rng.sample(shares, 3)) == secret
    assert misses == 200  # a 32-byte match by chance has probability 2^-256


def test_seeded_rng_is_deterministic_and_default_is_not() -> None:
    a = shamir.split(b"pin", 2, 3, rng=random.Random(5))
    b = shamir.split(b"pin", 2, 3, rng=random.Random(5))
    assert a == b
    assert shamir.split(b"x" * 16, 2, 3) != shamir.split(b"x" * 16, 2, 3)


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=1, max_size=32), n=st.integers(1, 5))
def test_share_encoding_round_trips(secret: bytes, n: int) -> None:
    for share in shamir.split(secret, 1, n):
        data = shamir.encode_share(share)
        assert data[0] == shamir.SHARE_VERSION and data[1] == share.x
        assert shamir.decode_share(data) == share


@pytest.mark.parametrize("bad", [b"", b"\x01\x01", b"\x09\x01abc", b"\x01\x00abc"])
def test_share_decoding_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        shamir.decode_share(bad)


def test_bad_parameters_and_inputs() -> None:
    share = shamir.split(b"pin", 2, 3)[1]
    with pytest.raises(errors.BadInput, match="twice"):
        shamir.combine([share, share])
    with pytest.raises(errors.BadInput):
        shamir.combine([])
    with pytest.raises(errors.MalformedInput):
        shamir.combine([share, shamir.Share(3, b"toolong")])
    for k, n in [(4, 3), (0, 3), (1, 256), (-1, 2)]:
        with pytest.raises(errors.BadInput):
            shamir.split(b"pin", k, n)
    with pytest.raises(errors.BadInput):
        shamir.split(b"", 1, 1)
    assert "pin" not in repr(share) and str(len(share.y)) in repr(share)


def test_field_arithmetic_is_the_aes_field() -> None:
    for a in range(1, 256):
        assert shamir._mul(a, shamir._div(1, a)) == 1
    assert shamir._mul(0x57, 0x83) == 0xC1  # FIPS 197, section 4.2
    assert shamir._mul(0x57, 0x13) == 0xFE
    with pytest.raises(ZeroDivisionError):
        shamir._div(1, 0)


# --- redistribution: the quorum property over officer changes ----------------------------------


def _redistribute(shares: list[shamir.Share], senders: list[int], k_new: int, new_xs: list[int]) -> list[shamir.Share]:
    """The senders (indices into ``shares``) re-share to ``new_xs``; each new holder combines."""
    subs = {x: [] for x in new_xs}  # type: dict[int, list[tuple[int, bytes]]]
    for i in senders:
        for sub in shamir.reshare(shares[i], k_new, new_xs):
            subs[sub.x].append((shares[i].x, sub.y))
    return [shamir.combine_subshares(x, subs[x]) for x in new_xs]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 7), records=st.integers(1, 4))
def test_any_k_open_exactly_the_approved_records_any_k_minus_1_nothing(
    data: st.DataObject, n: int, records: int
) -> None:
    """Per-record keys split K-of-N: K officers' shares of the approved records rebuild exactly
    those keys; K-1 shares rebuild none (32-byte keys: a wrong guess is never the key)."""
    k = data.draw(st.integers(1, n))
    keys = [data.draw(st.binary(min_size=32, max_size=32)) for _ in range(records)]
    split = [shamir.split(key, k, n) for key in keys]
    approved = data.draw(st.sets(st.integers(0, records - 1)))
    officers = data.draw(st.permutations(range(n)))[:k]
    opened = {r: shamir.combine([split[r][i] for i in officers]) for r in approved}
    assert opened == {r: keys[r] for r in approved}
    if k > 1:
        for r in range(records):
            assert shamir.combine([split[r][i] for i in officers[: k - 1]]) != keys[r]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 7))
def test_after_add_remove_or_quorum_change_the_new_set_holds_the_secret(data: st.DataObject, n: int) -> None:
    """Any K old officers redistribute to a new set (an officer added or removed, or a new
    quorum): any K' new shares rebuild the secret, K'-1 do not, and a removed officer's old
    share with K'-1 new ones rebuilds nothing."""
    k = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, k, n)
    change = data.draw(st.sampled_from(["add", "remove", "quorum"]))
    old_xs = [s.x for s in shares]
    if change == "add" and n < 7:
        new_xs = [*old_xs, max(old_xs) + 1]
    elif change == "remove" and n > 1:
        removed = data.draw(st.sampled_from(old_xs))
        new_xs = [x for x in old_xs if x != removed]
    else:
        new_xs = old_xs
    k_new = data.draw(st.integers(1, len(new_xs))) if change == "quorum" else min(k, len(new_xs))
    senders = data.draw(st.permutations(range(n)))[:k]
    new_shares = _redistribute(shares, senders, k_new, new_xs)
    chosen = data.draw(st.permutations(new_shares))
    assert shamir.combine(chosen[:k_new]) == secret
    if k_new > 1:
        assert shamir.combine(chosen[: k_new - 1]) != secret
        # the old shares (and so a removed officer's) do not mix with the new ones
        old = data.draw(st.sampled_from(shares))
        others = [s for s in chosen if s.x != old.x]
        mixed = [*others[: k_new - 1], old]
        if len(mixed) == k_new:
            assert shamir.combine(mixed) != secret
    # fewer than K old officers re-sharing give the new set a different secret
    if k > 1:
        short = _redistribute(shares, senders[: k - 1], k_new, new_xs)
        assert shamir.combine(short[:k_new]) != secret


def test_combine_subshares_rejects_mismatched_lengths_and_repeats() -> None:
    with pytest.raises(errors.MalformedInput):
        shamir.combine_subshares(1, [(1, b"ab"), (2, b"a")])
    with pytest.raises(errors.BadInput):
        shamir.combine_subshares(1, [(1, b"ab"), (1, b"cd")])
    with pytest.raises(errors.BadInput):
        shamir.split_at(b"s", 2, [1, 1])
