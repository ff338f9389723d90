"""The recovery side's repositories: the one-use completion's steps are conditional writes, a
second approval by one officer is a Conflict, ids and epoch numbers are drawn by the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsmkm.store.database import Database
from hsmkm.store.errors import Conflict
from hsmkm.store.repos.epochs import EpochStatus
from hsmkm.store.repos.recovery import NewRequest, RequestKind, RequestStatus
from hsmkm.store.tx import Tx


def _request(tx: Tx) -> int:
    return tx.recovery.add(
        NewRequest(
            None,
            RequestKind.POLICY,
            "test",
            "operator",
            "2026-01-01T00:00:00+00:00",
            "2026-01-02T00:00:00+00:00",
            "[]",
            "hsmkm-request-00",
            b"\x30\x00",
            1,
        )
    )


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database.create(tmp_path / "km.db")
    with db.write() as tx:
        tx.officers.register("ann", "pkcs11:token=ann", b"\x30\x00", b"", 1, "2026-01-01T00:00:00+00:00")
    return db


def test_request_ids_are_drawn_by_the_insert(db: Database) -> None:
    with db.write() as tx:
        first, second = _request(tx), _request(tx)
        assert second == first + 1
        row = tx.recovery.get(second)
        assert row is not None and row.status is RequestStatus.OPEN and row.kind is RequestKind.POLICY


def test_each_step_of_the_completion_is_conditional_on_the_status_and_the_claim(db: Database) -> None:
    with db.write() as tx:
        rid = _request(tx)
        assert tx.recovery.transition(rid, RequestStatus.OPEN, RequestStatus.COMPLETING)
        # a second claimant that read 'open' moves nothing
        assert not tx.recovery.transition(rid, RequestStatus.OPEN, RequestStatus.COMPLETING)
        tx.recovery.set_claim(rid, "host:1:1")
        # only the claim's holder finishes
        assert not tx.recovery.transition_claimed(rid, RequestStatus.COMPLETING, RequestStatus.COMPLETED, "host:2:2")
        assert tx.recovery.claim_state(rid) == (RequestStatus.COMPLETING, "host:1:1")
        assert tx.recovery.transition_claimed(rid, RequestStatus.COMPLETING, RequestStatus.COMPLETED, "host:1:1")
        assert not tx.recovery.transition_claimed(rid, RequestStatus.COMPLETING, RequestStatus.OPEN, "host:1:1")
        assert tx.recovery.claim_state(rid) == (RequestStatus.COMPLETED, "host:1:1")


def test_a_second_approval_by_one_officer_is_a_conflict(db: Database) -> None:
    with db.write() as tx:
        rid = _request(tx)
        tx.recovery.add_approval(rid, "ann", b"sig", b"", "2026-01-01T00:00:00+00:00")
    with pytest.raises(Conflict), db.write() as tx:
        tx.recovery.add_approval(rid, "ann", b"other", b"", "2026-01-01T00:00:01+00:00")
    with db.read() as tx:
        assert tx.recovery.approvers(rid) == ["ann"] and tx.recovery.approvals(rid)[0].signature == b"sig"


def test_epoch_numbers_follow_the_epochs_there(db: Database) -> None:
    with db.write() as tx:
        # an epoch made without the counter (as a first release's upgrade makes its one)
        tx.connection.execute("INSERT INTO share_epochs(epoch, quorum, status) VALUES (4, 1, 'active')")
        assert tx.epochs.create(1, EpochStatus.PENDING, None, [("ann", 1, b"\x30\x00")]) == 5
        assert tx.epochs.create(1, EpochStatus.PENDING, None, [("ann", 1, b"\x30\x00")]) == 6
        assert tx.epochs.sharing_numbers() == (4, 5, 6)
        tx.epochs.activate(6)
        assert [e.number for e in tx.epochs.sharing()] == [6]
        assert tx.epochs.officers(6) == [("ann", 1, b"\x30\x00")]
