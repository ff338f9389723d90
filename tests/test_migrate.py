"""`archive migrate` on a KM home made by the first release (tests/fixtures/v1-home.tar.gz):
one last quorum-approved use of the recovery token, resumable after a crash; afterwards every
record is recoverable through the officers' per-record shares and the recovery key is gone."""

from __future__ import annotations

import sqlite3
import tarfile
from pathlib import Path

import pytest

from conftest import MakeToken, hsmkm, trial_pin
from hsmkm import errors
from hsmkm.keys.epf import EpfKeystore
from hsmkm.km import migrate, recovery
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for

FIXTURE = Path(__file__).parent / "fixtures" / "v1-home.tar.gz"
MADE_AT = "/tmp/hsmkm-v1-fixture/km"


@pytest.fixture
def v1_as_made(tmp_path: Path) -> dict[str, Path]:
    """The first release's home as it was made (its database at schema version 1)."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    home = tmp_path / "km"
    # The first release wrote absolute paths into the home; until homes are relocatable, point
    # the extracted copy's paths at itself.
    for f in (home / "km.json", home / "softhsm" / "softhsm2.conf"):
        f.write_text(f.read_text().replace(MADE_AT, str(home)))
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("UPDATE officers SET uri = replace(uri, ?, ?)", (MADE_AT, str(home)))
    return {"home": home, "users": tmp_path / "users"}


@pytest.fixture
def v1(v1_as_made: dict[str, Path]) -> dict[str, Path]:
    """The first release's home after ``hsmkm db upgrade``, as its operator runs it first."""
    hsmkm("db", "upgrade", home=v1_as_made["home"])
    return v1_as_made


def _encryption_keys(path: Path, password: str) -> set[int]:
    store = EpfKeystore.open(path, password)
    return {e.key.private_numbers().private_value for e in store.encryption_entries()}  # type: ignore[union-attr]


def _recover(home: Path, email: str, out: Path) -> set[int]:
    rid = hsmkm("recovery", "request", email, "--reason", "after migration", "--json", home=home).json()["id"]
    for officer in ("officer2", "officer3"):
        # officer2 did not approve the migration: its first approval pins the officer set
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", "--trust-officer-set", home=home)
    hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        home=home,
        env={"OUT": "recovered-pw"},
    )
    return _encryption_keys(out, "recovered-pw")


@pytest.mark.slow
def test_migrate_keeps_every_record_recoverable_and_destroys_the_recovery_key(
    v1: dict[str, Path], tmp_path: Path
) -> None:
    home, users = v1["home"], v1["users"]
    counts = hsmkm("status", "--json", home=home).json()["counts"]
    assert counts["archived_keys"] == counts["archived_keys_to_migrate"] == 4
    assert "run 'hsmkm archive migrate'" in hsmkm("status", home=home).stdout
    # Before migration: the first release's records cannot be requested, nor officers changed.
    early = hsmkm("recovery", "request", "alice@example.com", "--reason", "x", home=home, check=False)
    assert early.returncode == 2 and "run 'hsmkm archive migrate' first" in early.stderr
    change = hsmkm("recovery", "policy", "--quorum", "3", home=home, check=False)
    assert change.returncode == 2 and "migrate the archive first" in change.stderr
    # A user enrolled now gets a per-record archive record at once.
    code = hsmkm("user", "add", "dave@example.com", "--json", home=home).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "dave@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(tmp_path / "dave.epf"),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": "dave-pw-1"},
    )

    opened = hsmkm("archive", "migrate", "--json", home=home).json()
    rid = opened["id"]
    assert opened["records"] == 4
    short = hsmkm("archive", "migrate", "--request", str(rid), home=home, check=False)
    assert short.returncode == 1 and "0 of 2 approvals" in short.stderr
    # The first release's officers never attested an officer set: they are shown the keys'
    # fingerprints and must say they trust them.
    untrusted = hsmkm("recovery", "approve", str(rid), "--officer", "officer1", "--yes", home=home, check=False)
    assert untrusted.returncode == 2 and "--trust-officer-set" in untrusted.stderr.splitlines()[-1]
    for officer in ("officer1", "officer3"):
        run = hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", "--trust-officer-set", home=home)
        assert "officer1 SHA-256" in run.stderr

    # A crash after the first batch: the next run continues where it stopped.
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))

    class Crash(Exception):
        pass

    def crash(done: int) -> None:
        if done == 1:
            raise Crash()

    with pytest.raises(Crash):
        migrate.migrate(km, rid, batch=1, after_batch=crash)
    assert migrate.pending_records(km) == 3
    result = migrate.migrate(km, rid, batch=2)
    assert result.records == 3 and result.recovery_key_destroyed
    assert km.db.get_meta("recovery_public_key") is None
    assert {r[0] for r in km.db.conn.execute("SELECT format_version FROM archive")} == {2}
    assert hsmkm("status", "--json", home=home).json()["counts"]["archived_keys_to_migrate"] == 0
    again = hsmkm("archive", "migrate", home=home, check=False)
    assert again.returncode == 2 and "nothing to migrate" in again.stderr
    km.close()

    # Every record comes back through two officers' shares, equal to the users' own keys.
    assert _recover(home, "alice@example.com", tmp_path / "alice.p12") == _encryption_keys(
        users / "alice.epf", "fixture-alice"
    )
    assert len(_encryption_keys(users / "alice.epf", "fixture-alice")) == 2
    assert _recover(home, "bob@example.com", tmp_path / "bob.p12") == _encryption_keys(users / "bob.epf", "fixture-bob")
    assert _recover(home, "carol@example.com", tmp_path / "carol.p12") == _encryption_keys(
        users / "carol.epf", "fixture-carol"
    )
    assert _recover(home, "dave@example.com", tmp_path / "dave.p12") == _encryption_keys(
        tmp_path / "dave.epf", "dave-pw-1"
    )
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_the_recovery_token_is_empty_after_migration(v1: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The PIN rebuilt for the one last use no longer finds a recovery key on the token."""
    from hsmkm.km import custody

    home = v1["home"]
    seen: list[str] = []
    real = custody.combine_pin

    def spy(shares):  # type: ignore[no-untyped-def]
        seen.append(real(shares))
        return seen[-1]

    monkeypatch.setattr(custody, "combine_pin", spy)
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    rid = recovery.open_request(km, recovery.RequestKind.MIGRATE, "migrate").id
    for officer in ("officer1", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", "--trust-officer-set", home=home)
    migrate.migrate(km, rid)
    assert km.config.recovery_token is not None
    from hsmkm.km.manager import open_token

    rec = open_token(km.config.recovery_token, seen[0], km.config.softhsm_config)
    assert not rec.has_object("hsmkm-recovery") and rec.private_key_labels() == []
    with pytest.raises(errors.PolicyViolation, match="nothing to migrate"):
        recovery.open_request(km, recovery.RequestKind.MIGRATE, "again")


def test_a_first_release_database_gains_the_new_tables_by_db_upgrade_once(v1_as_made: dict[str, Path]) -> None:
    from hsmkm.km import epochs
    from hsmkm.store.database import Database, head_revision

    path = v1_as_made["home"] / "km.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
        pin_epoch = int(conn.execute("SELECT value FROM meta WHERE key = 'share_epoch'").fetchone()[0])
    refused = hsmkm("status", home=v1_as_made["home"], check=False)
    assert refused.returncode == 2 and "run 'hsmkm db upgrade'" in refused.stderr
    for _ in range(2):  # idempotent
        assert Database.upgrade(path)[1] == head_revision()
        db = Database.open(path)
        assert db.get_meta("schema_version") == "2"
        with db.read() as tx:
            active = epochs.active(tx)
        assert active.number == pin_epoch and active.quorum == 2
        assert [(o.name, o.x) for o in active.officers] == [("officer1", 1), ("officer2", 2), ("officer3", 3)]
        assert db.conn.execute("SELECT COUNT(*) FROM share_epochs").fetchone()[0] == 1
        db.close()


@pytest.mark.interop
def test_a_recovery_tokens_so_pin_resets_its_user_pin_until_the_key_is_destroyed(
    tmp_path: Path, module_path: str, user_token: MakeToken
) -> None:
    """Why the migration destroys the recovery key: on SoftHSM2 the SO PIN resets the user PIN
    (C_InitPIN, here through pkcs11-tool), and the holder then uses the key with no officer."""
    import os
    import subprocess
    import sys

    from hsmkm import keys
    from hsmkm.keys.algorithms import KeyAlgorithm

    conf = user_token("rec", "nobody-knows-1")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    # The recovery key made in this process; the SO and the holder below are other processes.
    rec = keys.open_token(f"pkcs11:token=rec?module-path={module_path}", "nobody-knows-1", softhsm_config=str(conf))
    rec.generate_keypair(KeyAlgorithm.RSA2048, "hsmkm-recovery", b"r", sign=False, decrypt=True)
    rec.close()
    probe = (
        "import sys; from hsmkm.keys.pkcs11 import Pkcs11Module; from hsmkm.keys.softhsm import find_softhsm_module; "
        "ts = Pkcs11Module.load(find_softhsm_module()).open_token(sys.argv[1], label='rec'); "
        "print(ts.has_object('hsmkm-recovery')); sys.argv[2:] and ts.destroy('hsmkm-recovery', "
        "__import__('pkcs11').ObjectClass.PRIVATE_KEY)"
    )

    def reset_and_probe(new_pin: str, *destroy: str) -> str:
        subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                module_path,
                "--token-label",
                "rec",
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                "so-nobody-knows-1",
                "--init-pin",
                "--new-pin",
                new_pin,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        return subprocess.run(
            [sys.executable, "-c", probe, new_pin, *destroy], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    assert reset_and_probe("so-chose-this-1", "destroy") == "True"  # the SO is in, with the key
    assert reset_and_probe("so-chose-this-2") == "False"  # once destroyed, a reset finds nothing
