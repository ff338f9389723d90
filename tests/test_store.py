"""The store layer: migrations bring a first-release (v1) and a pre-store (v2) database to the
same schema as a fresh one, which is the schema of ``store/schema.py``; counters start where
the data left them; clashes are Conflicts; a database at another revision is refused."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from conftest import hsmkm
from hsmkm import errors
from hsmkm.store import errors as store_errors
from hsmkm.store.database import Database, Revision, head_revision, write_lock_path
from hsmkm.store.repos.counters import Counter
from hsmkm.store.repos.users import NewUser, UserStatus
from hsmkm.store.schema import metadata

FIXTURES = Path(__file__).parent / "fixtures"
MADE_AT = "/tmp/hsmkm-v1-fixture/km"


def _v1_home(tmp_path: Path) -> Path:
    """The first release's home (tests/fixtures/v1-home.tar.gz), its paths pointed at itself."""
    with tarfile.open(FIXTURES / "v1-home.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    home = tmp_path / "km"
    for f in (home / "km.json", home / "softhsm" / "softhsm2.conf"):
        f.write_text(f.read_text().replace(MADE_AT, str(home)))
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("UPDATE officers SET uri = replace(uri, ?, ?)", (MADE_AT, str(home)))
    return home


def _v2_database(path: Path, with_settings: bool) -> Path:
    """A database as the code before the store layer made it (tests/fixtures/v2-schema.sql)."""
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "v2-schema.sql").read_text())
        if with_settings:  # made on demand by that code, once a user chose a setting
            conn.execute(
                "CREATE TABLE IF NOT EXISTS user_settings (user_id INTEGER PRIMARY KEY "
                "REFERENCES users(id), key_alg TEXT, client TEXT)"
            )
    return path


def _schema(path: Path) -> dict[str, Any]:
    """Every table's columns, keys and indexes as SQLAlchemy's inspector reads them."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        insp = inspect(engine)
        out: dict[str, Any] = {}
        for table in sorted(insp.get_table_names()):
            out[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], c["default"]) for c in insp.get_columns(table)],
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                    for f in insp.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)
                ),
                "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            }
        with engine.connect() as conn:
            out["partial indexes"] = sorted(
                r[0] for r in conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE sql LIKE '%WHERE%'")
            )
        return out
    finally:
        engine.dispose()


def _pk_declared_without_not_null(diff: Any) -> bool:
    """SQLite reports a one-column PRIMARY KEY declared without NOT NULL (every such key since
    the first release) as nullable; in the metadata a primary key is NOT NULL, as on PostgreSQL."""
    if not isinstance(diff, list) or len(diff) != 1 or diff[0][0] != "modify_nullable":
        return False
    _, _, table, column, _, _, _ = diff[0]
    return bool(metadata.tables[table].c[column].primary_key and len(metadata.tables[table].primary_key) == 1)


def _differences_from_schema_py(path: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        return [
            d
            for d in diffs
            if not (d[0] == "remove_table" and d[1].name == "alembic_version") and not _pk_declared_without_not_null(d)
        ]
    finally:
        engine.dispose()


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    path = tmp_path / "fresh.db"
    Database.create(path).close()
    return path


def test_the_head_the_code_checks_is_the_migrations_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", "hsmkm.store:migrations")
    assert ScriptDirectory.from_config(cfg).get_current_head() == head_revision()


def test_a_fresh_database_is_at_head_and_matches_schema_py(fresh: Path) -> None:
    db = Database.open(fresh)
    assert db.revision() == (Revision.CURRENT, head_revision())
    db.close()
    assert _differences_from_schema_py(fresh) == []


def test_the_first_release_database_upgraded_has_the_fresh_schema(tmp_path: Path, fresh: Path) -> None:
    path = _v1_home(tmp_path) / "km.db"
    assert _schema(path) != _schema(fresh)
    assert Database.upgrade(path) == ("0001_v1", head_revision())
    assert _schema(path) == _schema(fresh)
    assert _differences_from_schema_py(path) == []


@pytest.mark.parametrize("with_settings", [False, True], ids=["no-user-settings", "user-settings"])
def test_a_pre_store_v2_database_upgraded_has_the_fresh_schema(
    tmp_path: Path, fresh: Path, with_settings: bool
) -> None:
    path = _v2_database(tmp_path / "v2.db", with_settings)
    assert _schema(path) != _schema(fresh)
    Database.upgrade(path)
    assert _schema(path) == _schema(fresh)
    assert _differences_from_schema_py(path) == []


def test_the_upgrade_keeps_the_first_releases_data_and_makes_its_share_epoch(tmp_path: Path) -> None:
    path = _v1_home(tmp_path) / "km.db"
    with sqlite3.connect(path) as conn:
        before = {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("users", "certificates", "audit", "archive", "crls", "recovery_requests", "approvals")
        }
        share_epoch = int(conn.execute("SELECT value FROM meta WHERE key = 'share_epoch'").fetchone()[0])
    Database.upgrade(path)
    with sqlite3.connect(path) as conn:
        after = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in before}
        epochs = conn.execute("SELECT epoch, quorum, status FROM share_epochs").fetchall()
        officers = conn.execute("SELECT officer, x FROM epoch_officers ORDER BY x").fetchall()
    assert after == before
    assert epochs == [(share_epoch, 2, "active")]
    assert officers == [("officer1", 1), ("officer2", 2), ("officer3", 3)]


def test_the_revocation_counter_starts_after_the_last_revocation(tmp_path: Path) -> None:
    path = _v1_home(tmp_path) / "km.db"
    with sqlite3.connect(path) as conn:
        last = conn.execute("SELECT MAX(revoked_seq) FROM certificates").fetchone()[0]
    assert last == 2  # carol's two certificates
    Database.upgrade(path)
    db = Database.open(path)
    with db.read() as tx:
        assert tx.counters.current(Counter.REVOKED_SEQ) == last
    with db.write() as tx:
        assert tx.counters.draw(Counter.REVOKED_SEQ, 3) == last + 3
        assert tx.counters.draw(Counter.REVOKED_SEQ) == last + 4
    with pytest.raises(RuntimeError), db.write() as tx:
        tx.counters.draw(Counter.REVOKED_SEQ)
        raise RuntimeError("rolled back")
    with db.read() as tx:
        assert tx.counters.current(Counter.REVOKED_SEQ) == last + 4
    db.close()


def test_a_fresh_counter_starts_at_zero(fresh: Path) -> None:
    db = Database.open(fresh)
    with db.write() as tx:
        assert tx.counters.draw(Counter.REVOKED_SEQ) == 1
    db.close()


def test_a_clash_is_a_conflict_and_the_transaction_rolls_back(fresh: Path) -> None:
    db = Database.open(fresh)
    with db.write() as tx:
        first = tx.users.add(NewUser("a@example.com", None, UserStatus.PENDING, "2026-01-01T00:00:00+00:00"))
        assert tx.users.add_many([NewUser(f"u{i}@example.com", None, UserStatus.PENDING, "t") for i in range(3)]) == [
            first + 1,
            first + 2,
            first + 3,
        ]
    with pytest.raises(store_errors.Conflict) as raised, db.write() as tx:
        tx.users.add(NewUser("b@example.com", None, UserStatus.PENDING, "t"))
        tx.users.add(NewUser("a@example.com", None, UserStatus.PENDING, "t"))
    assert isinstance(raised.value, errors.HsmkmError) and raised.value.exit_code is errors.ExitCode.BAD_INPUT
    with db.read() as tx:
        assert tx.users.by_email("b@example.com") is None
        assert len(tx.users.all()) == 4
    db.close()


def test_an_older_database_is_refused_with_the_upgrade_command(tmp_path: Path) -> None:
    home = _v1_home(tmp_path)
    with pytest.raises(store_errors.SchemaOutdated, match="run 'hsmkm db upgrade'"):
        Database.open(home / "km.db")
    run = hsmkm("user", "list", home=home, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("hsmkm: error: ") and "run 'hsmkm db upgrade'" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_db_upgrade_brings_the_first_release_home_to_head_and_status_shows_it(tmp_path: Path) -> None:
    home = _v1_home(tmp_path)
    first = hsmkm("db", "upgrade", "--json", home=home).json()
    assert first == {"from": "0001_v1", "to": head_revision(), "upgraded": True}
    again = hsmkm("db", "upgrade", "--json", home=home).json()
    assert again == {"from": head_revision(), "to": head_revision(), "upgraded": False}
    st = hsmkm("status", "--json", home=home).json()
    assert st["schema_revision"] == head_revision()
    assert st["counts"]["users"] == 3 and st["counts"]["revoked"] == 2
    assert f"schema revision {head_revision()}" in hsmkm("status", home=home).stdout
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_a_newer_database_is_refused_and_not_touched(fresh: Path) -> None:
    with sqlite3.connect(fresh) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    before = fresh.read_bytes()
    with pytest.raises(store_errors.SchemaTooNew, match="9999_from_the_future"):
        Database.open(fresh)
    with pytest.raises(store_errors.SchemaTooNew):
        Database.upgrade(fresh)
    assert fresh.read_bytes() == before


def test_a_release_database_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    path = _v2_database(tmp_path / "v3.db", with_settings=False)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(store_errors.SchemaTooNew):
        Database.open(path)
    with pytest.raises(store_errors.SchemaTooNew):
        Database.upgrade(path)


def test_a_file_that_is_not_a_database_is_refused_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "km.db"
    path.write_bytes(b"not a database, just bytes " * 100)
    with pytest.raises(store_errors.DatabaseDamaged) as raised:
        Database.open(path)
    assert raised.value.exit_code is errors.ExitCode.BAD_INPUT


def test_init_makes_a_database_at_head(km_home: Path) -> None:
    db = Database.open(km_home / "km.db")
    assert db.revision() == (Revision.CURRENT, head_revision())
    db.close()
    copy = km_home.parent / "copy-of-km.db"
    shutil.copy(km_home / "km.db", copy)
    assert _differences_from_schema_py(copy) == []
    copy.unlink()


def test_a_drawn_serial_already_recorded_is_a_conflict_and_issuance_draws_again(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate insert's clash comes back as a store Conflict; issuance re-signs only
    the certificate whose serial was taken, and the batch is recorded once."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from conftest import trial_pin
    from hsmkm.certnames import CertKind
    from hsmkm.km.authority import IssueRequest, issue_certificates, serial_hex
    from hsmkm.km.manager import KeyManager
    from hsmkm.km.publishers import publisher_for
    from hsmkm.x509 import profiles

    hsmkm("init", "--ca-subject", "CN=Store KM CA,O=hsmkm tests", "--ca-key", "p256", home=fresh_home)
    km = KeyManager.open(fresh_home, trial_pin(fresh_home, "km"), publisher=publisher_for(fresh_home))
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    [first] = issue_certificates(km, [IssueRequest(key, CertKind.SIGN, "a@example.com")])
    real = profiles.random_serial
    draws = iter([first.serial_number, real()])  # the second request draws the taken serial first
    monkeypatch.setattr(profiles, "random_serial", lambda: next(draws, None) or real())
    batch = issue_certificates(
        km, [IssueRequest(key, CertKind.SIGN, "b@example.com"), IssueRequest(key, CertKind.SIGN, "c@example.com")]
    )
    serials = {serial_hex(c.serial_number) for c in batch}
    assert serial_hex(first.serial_number) not in serials and len(serials) == 2
    with km.db.read() as tx:
        assert tx.certs.serials_taken(sorted(serials)) == serials
        assert tx.certs.count_issued() == 3
    issues = [e for e in km.audit().entries() if e.action == "cert.issue"]
    assert [e.details["count"] for e in issues] == [1, 2]
    km.close()


_HOLD_WRITE = """
import sys, time
from pathlib import Path
from hsmkm.store.database import Database
db = Database.open(Path(sys.argv[1]))
with db.write():
    print("inside", flush=True)
    time.sleep(600)
"""


def test_writers_are_ordered_by_the_lock_file_and_a_killed_writer_leaves_it_free(tmp_path: Path) -> None:
    path = tmp_path / "km.db"
    Database.create(path).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_WRITE, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"inside\n"
        fd = os.open(write_lock_path(path), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # held for the whole write transaction
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder.kill()  # kill -9 inside the transaction: the kernel drops the flock
            holder.wait(timeout=30)
            db = Database.open(path)
            try:
                with db.write() as tx:
                    tx.connection.execute("INSERT INTO meta (key, value) VALUES ('after-kill', '1')")
                assert db.get_meta("after-kill") == "1"
            finally:
                db.close()
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and released after the commit
        finally:
            os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
