"""Prepared hot statements (store/lean.py): the same transactions, rows and errors as a
statement run through SQLAlchemy."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from hsmkm.store import errors as store_errors
from hsmkm.store.database import Database
from hsmkm.store.lean import Prepared
from hsmkm.store.repos.archive import NewRecord
from hsmkm.store.repos.certs import NewCert
from hsmkm.store.repos.users import NewUser, UserStatus
from hsmkm.store.schema import meta

T = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    path = tmp_path / "km.db"
    Database.create(path).close()
    return Database.open(path)


def _cert(serial: str, user_id: int) -> NewCert:
    return NewCert(serial, user_id, "sign", b"\x30\x00", T, T, T)


def test_prepared_writes_are_the_write_transactions_and_roll_back_with_it(db: Database) -> None:
    with pytest.raises(RuntimeError), db.write() as tx:
        tx.meta.set("probe", "1")
        assert tx.meta.get("probe") == "1"  # its own write, seen inside the transaction
        assert tx.connection.in_transaction
        raise RuntimeError("abandon")
    with db.read() as tx:
        assert tx.meta.get("probe") is None
    with db.write() as tx:
        tx.meta.set("probe", "2")
    with db.read() as tx:
        assert tx.meta.get("probe") == "2"
    db.close()


def test_a_clash_in_a_prepared_statement_is_a_conflict_and_nothing_of_the_transaction_stays(db: Database) -> None:
    with db.write() as tx:
        uid = tx.users.add(NewUser("a@example.com", None, UserStatus.PENDING, T))
        tx.certs.add(_cert("01", uid))
    with pytest.raises(store_errors.Conflict), db.write() as tx:
        tx.certs.add(_cert("02", uid))
        tx.certs.add_many([_cert("03", uid), _cert("01", uid)])
    with db.read() as tx:
        assert tx.certs.der("01") is not None
        assert tx.certs.der("02") is None and tx.certs.der("03") is None
    db.close()


def test_a_driver_error_leaves_a_prepared_statement_as_the_same_hsmkm_error_as_through_sqlalchemy(
    db: Database,
) -> None:
    db.conn.execute("ALTER TABLE archive RENAME TO archive_elsewhere")
    with db.read() as tx:
        with pytest.raises(store_errors.DatabaseBusy) as through_sqlalchemy:
            tx.archive.count()  # built per call, run by SQLAlchemy
        with pytest.raises(store_errors.DatabaseBusy) as prepared:
            tx.archive.under_label("k", 1)
    assert "no such table: archive" in str(prepared.value)
    assert str(prepared.value).split("(")[0] == str(through_sqlalchemy.value).split("(")[0]
    db.close()


def test_values_built_into_a_statement_and_given_limits_both_bind(db: Database) -> None:
    with db.write() as tx:
        uid = tx.users.add(NewUser("a@example.com", None, UserStatus.PENDING, T))
        for i in range(5):
            tx.certs.add(_cert(f"{i:02x}", uid))
            tx.archive.add(NewRecord(uid, f"{i:02x}", "p256", T, 2, "old", bytes([i]) * 40), [])
    with db.write() as tx:
        assert [r.sealed[0] for r in tx.archive.under_label("old", 3)] == [0, 1, 2]  # LIMIT given
        assert tx.archive.under_label("other", 3) == []
        assert tx.audit.last() is None  # LIMIT 1 built in
        tx.archive.reseal([(r.id, "old", "new", b"x" * 40) for r in tx.archive.under_label("old", 2)])
    with db.read() as tx:
        assert [r.id for r in tx.archive.under_label("new", 10)] == [1, 2]
        assert all(r.sealed == b"x" * 40 and isinstance(r.sealed, bytes) for r in tx.archive.under_label("new", 10))
    db.close()


def test_an_in_list_is_refused_by_a_prepared_statement() -> None:
    stmt = Prepared(select(meta.c.value).where(meta.c.key.in_(["a", "b"])))
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as conn, pytest.raises(TypeError, match="expanding"):
            stmt.all(conn)
    finally:
        engine.dispose()
