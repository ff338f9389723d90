"""The officer side's protocol as a property: approvals open exactly the approved records, and
redistribution hands the new officer set working shares (software keys stand in for the
officers' tokens here; the same code runs on real tokens in test_custody and test_recovery)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.km import archive, sealing, shamir
from hsmkm.km.epochs import Epoch, EpochOfficer, EpochStatus
from hsmkm.km.officer_side import (
    NewOfficer,
    RecordIdentity,
    approve_recovery,
    combine_received,
    open_approval,
    reshare,
    share_context,
    verify_content,
)


def _epoch(number: int, quorum: int, names: list[str], keys: dict[str, ec.EllipticCurvePrivateKey]) -> Epoch:
    return Epoch(
        number,
        quorum,
        EpochStatus.ACTIVE,
        None,
        tuple(EpochOfficer(n, i + 1, keys[n].public_key()) for i, n in enumerate(names)),
    )


def _own_share(
    key: ec.EllipticCurvePrivateKey, rec: RecordIdentity, epoch: int, name: str, x: int, sealed: bytes
) -> shamir.Share:
    return shamir.decode_share(sealing.unseal(key, sealed, share_context(rec, epoch, name, x)))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), n_records=st.integers(1, 3))
def test_approvals_open_exactly_the_approved_records_and_redistribution_keeps_them(
    data: st.DataObject, n: int, n_records: int
) -> None:
    k = data.draw(st.integers(1, n))
    names = [f"o{i}" for i in range(n)]
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in names}
    epoch = _epoch(1, k, names, keys)
    records = [RecordIdentity(i + 1, 10 + i, f"{i:040x}") for i in range(n_records)]
    record_keys = {r.record_id: os.urandom(32) for r in records}
    rows = {r.record_id: archive.split_and_seal_key(record_keys[r.record_id], r, [epoch]) for r in records}

    # --- a recovery of the approved records by any K officers ---
    approved = data.draw(st.lists(st.sampled_from(records), unique=True, min_size=1))
    approvers = data.draw(st.permutations(names))[:k]
    request_key = ec.generate_private_key(ec.SECP256R1())
    content = b'{"id":7}'
    got: dict[int, list[shamir.Share]] = {}
    for name in approvers:
        o = epoch.officer(name)
        mine = [(r, next(s.sealed for s in rows[r.record_id] if s.officer == name)) for r in approved]
        signature, blob = approve_recovery(keys[name], name, o.x, 1, 7, content, mine, request_key.public_key())
        assert verify_content(o.public_key, signature, content)
        assert not verify_content(o.public_key, signature, b'{"id":8}')
        for e in open_approval(request_key, blob, 7, name, content):
            got.setdefault(e.record.record_id, []).append(e.share)
    assert set(got) == {r.record_id for r in approved}
    assert {rid: shamir.combine(s) for rid, s in got.items()} == {
        r.record_id: record_keys[r.record_id] for r in approved
    }
    if k > 1:
        assert all(shamir.combine(s[: k - 1]) != record_keys[rid] for rid, s in got.items())

    # --- an officer change: add one, remove one, or a new quorum ---
    change = data.draw(st.sampled_from(["add", "remove", "quorum"]))
    new_names = list(names)
    removed = None
    if change == "add":
        new_names.append("new")
        keys["new"] = ec.generate_private_key(ec.SECP256R1())
    elif change == "remove" and n > 1:
        removed = data.draw(st.sampled_from(names))
        new_names.remove(removed)
    k_new = data.draw(st.integers(1, len(new_names))) if change == "quorum" else min(k, len(new_names))
    new_officers = [NewOfficer(nm, i + 1, keys[nm].public_key()) for i, nm in enumerate(new_names)]
    senders = data.draw(st.permutations(names))[:k]
    blobs: dict[str, dict[str, bytes]] = {}
    for name in senders:
        o = epoch.officer(name)
        mine = [(r, next(s.sealed for s in rows[r.record_id] if s.officer == name)) for r in records]
        blobs[name] = reshare(keys[name], name, o.x, 1, 9, b"change", mine, 2, new_officers, k_new)
    new_shares: dict[str, dict[int, shamir.Share]] = {}
    for no in new_officers:
        received = [(s, epoch.officer(s).x, blobs[s][no.name]) for s in senders]
        sealed = combine_received(keys[no.name], no, 2, 9, b"change", received)
        assert {rec.record_id for rec, _ in sealed} == set(record_keys)
        new_shares[no.name] = {
            rec.record_id: _own_share(keys[no.name], rec, 2, no.name, no.x, blob) for rec, blob in sealed
        }
    chosen = data.draw(st.permutations(new_names))
    for r in records:
        assert shamir.combine([new_shares[nm][r.record_id] for nm in chosen[:k_new]]) == record_keys[r.record_id]
        if k_new > 1:
            assert (
                shamir.combine([new_shares[nm][r.record_id] for nm in chosen[: k_new - 1]]) != record_keys[r.record_id]
            )
            if removed is not None:
                o = epoch.officer(removed)
                old = _own_share(
                    keys[removed], r, 1, removed, o.x, next(s.sealed for s in rows[r.record_id] if s.officer == removed)
                )
                others = [new_shares[nm][r.record_id] for nm in chosen if new_shares[nm][r.record_id].x != old.x]
                assert shamir.combine([*others[: k_new - 1], old]) != record_keys[r.record_id]


def test_a_sub_share_blob_for_one_officer_does_not_open_for_another() -> None:
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("a", "b")}
    rec = RecordIdentity(1, 1, "0" * 40)
    epoch = _epoch(1, 1, ["a", "b"], keys)
    rows = archive.split_and_seal_key(os.urandom(32), rec, [epoch])
    new = [NewOfficer("a", 1, keys["a"].public_key()), NewOfficer("b", 2, keys["b"].public_key())]
    blobs = reshare(keys["a"], "a", 1, 1, 5, b"c", [(rec, rows[0].sealed)], 2, new, 1)
    with pytest.raises(errors.SignatureInvalid):
        combine_received(keys["b"], new[1], 2, 5, b"c", [("a", 1, blobs["a"])])
