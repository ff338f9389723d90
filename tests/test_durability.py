"""Nothing lost, nothing half-done: the token store's verified copy, rotation racing
enrollment, idempotent commands, the derived directory, temporary files, relocatable homes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import MakeToken, copy_km, hsmkm, trial_pin

PW = "durable-pass-1"

if TYPE_CHECKING:
    from pkcs11 import ObjectClass


def add_user(home: Path, email: str) -> str:
    return str(hsmkm("user", "add", email, "--json", home=home).json()["code"])


def enroll_epf(home: Path, email: str, code: str, path: Path, check: bool = True):  # type: ignore[no-untyped-def]
    return hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(path),
        "--password-source",
        "env:PW",
        "--json",
        env={"CODE": code, "PW": PW},
        check=check,
    )


def km_token_dir(home: Path) -> Path:
    for tdir in (home / "softhsm" / "tokens").iterdir():
        # token.object: generation, then the label attribute (type, kind, length, 32 bytes).
        if (tdir / "token.object").read_bytes()[32:64].rstrip() == b"hsmkm":
            return tdir
    raise AssertionError("no KM token")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def audit_actions(home: Path) -> list[str]:
    with sqlite3.connect(home / "km.db") as conn:
        return [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY seq")]


@pytest.fixture(scope="module")
def home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new KM, made once per module and never used itself (each test gets a copy, ``home``)."""
    h = tmp_path_factory.mktemp("template") / "km"
    hsmkm("init", "--ca-subject", "CN=Durable CA", "--ca-key", "p256", home=h)
    return h


@pytest.fixture
def home(home_template: Path, tmp_path: Path) -> Path:
    """A new KM of the test's own, a copy of the template (``copy_km``)."""
    return copy_km(home_template.parent, tmp_path, home_template.name)


# --- the token store's verified copy ---------------------------------------------------------


def test_softhsm_object_files_parse_and_their_cuts_do_not(home: Path) -> None:
    from hsmkm.keys.softhsm_store import file_is_sound, parse_object_file

    files = list((home / "softhsm" / "tokens").rglob("*.object"))
    assert len(files) >= 10
    for path in files:
        data = path.read_bytes()
        assert file_is_sound(path.name, data), path
        # What a kill between SoftHSM2's truncate and write leaves, and cuts inside values.
        assert not file_is_sound(path.name, b"")
        assert parse_object_file(data[:7]) is None
        assert parse_object_file(data[:-1]) is None


def test_an_emptied_token_file_is_restored_audited_and_warned_about(home: Path) -> None:
    token_object = km_token_dir(home) / "token.object"
    token_object.write_bytes(b"")  # as a kill -9 during a login leaves it
    run = hsmkm("status", "--json", home=home)
    st = run.json()
    assert st["token"]["label"] == "hsmkm" and len(st["keys"]) == 3
    assert "restored" in run.stderr and "token.object" in run.stderr
    assert st["token_store"]["repairs"] and "restored" in st["token_store"]["repairs"][0]
    assert token_object.stat().st_size > 0
    assert audit_actions(home)[-1] == "token.repair"
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_every_token_file_emptied_at_once_is_restored(home: Path) -> None:
    for path in (home / "softhsm" / "tokens").rglob("*.object"):
        path.write_bytes(b"")
    hsmkm("status", home=home)
    code = add_user(home, "dora@example.com")
    assert enroll_epf(home, "dora@example.com", code, home.parent / "dora.epf").json()["email"] == "dora@example.com"
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_a_half_written_object_without_a_copy_is_set_aside(home: Path) -> None:
    stray = km_token_dir(home) / "0badc0de-0000-0000-0000-000000000000.object"
    stray.write_bytes(b"\x00" * 8 + b"\x00\x00\x00\x00\x00\x00\x00\x03\x00")  # cut inside an attribute
    # Young however slow the machine: dated a minute ahead, so the command's own start-up
    # time can never age it past the set-aside threshold.
    ahead = time.time() + 60
    os.utime(stray, (ahead, ahead))
    young = hsmkm("status", home=home)
    assert "set aside" not in young.stderr and stray.exists()  # it may be an object being made
    old = time.time() - 60
    os.utime(stray, (old, old))
    run = hsmkm("status", home=home)
    assert "set aside" in run.stderr and not stray.exists()
    assert list((home / "softhsm" / "backup" / "set-aside").rglob("0badc0de*"))


def test_while_another_process_uses_the_store_only_lasting_damage_is_repaired(home: Path) -> None:
    from hsmkm.keys.softhsm_store import TokenStore

    store = TokenStore.of_config(home / "softhsm" / "softhsm2.conf")
    assert store is not None
    store.attach()  # this test process now uses the store, as a concurrent command would
    stray = km_token_dir(home) / "0badc0de-0000-0000-0000-000000000001.object"
    stray.write_bytes(b"")
    old = time.time() - 60
    os.utime(stray, (old, old))
    token_object = km_token_dir(home) / "token.object"
    token_object.write_bytes(b"")
    run = hsmkm("status", home=home)
    assert "restored" in run.stderr and token_object.stat().st_size > 0
    assert stray.exists()  # never set aside while the store is shared


def test_a_login_only_command_leaves_the_copy_alone_and_a_change_refreshes_it(home: Path) -> None:
    manifest = home / "softhsm" / "backup" / "manifest.json"
    before = manifest.read_bytes()
    hsmkm("status", home=home)
    hsmkm("audit", "verify", home=home)
    assert manifest.read_bytes() == before
    hsmkm("archive", "rotate", home=home)
    after = json.loads(manifest.read_bytes())
    assert manifest.read_bytes() != before
    # The copy holds exactly the store's sound files, each blob hashing to its name.
    for tname, files in after["tokens"].items():
        names = {p.name for p in (home / "softhsm" / "tokens" / tname).iterdir() if not p.name.endswith(".lock")}
        assert names == set(files)
        for digest in files.values():
            assert hashlib.sha256((home / "softhsm" / "backup" / "objects" / digest).read_bytes()).hexdigest() == digest


def test_commands_that_need_no_key_do_not_log_in(home: Path) -> None:
    code = add_user(home, "rita@example.com")
    enroll_epf(home, "rita@example.com", code, home.parent / "rita.epf")
    token_object = km_token_dir(home) / "token.object"
    before = token_object.read_bytes()
    # With the KM PIN file away: these never read the PIN, never load the module.
    pin = home / "secrets" / "km.pin"
    pin.rename(home.parent / "km.pin.away")
    for args in (
        ["user", "list"],
        ["user", "show", "rita@example.com"],
        ["directory", "show", "rita@example.com"],
        ["directory", "sync"],
    ):
        hsmkm(*args, home=home)
    (home.parent / "km.pin.away").rename(pin)
    assert token_object.read_bytes() == before
    hsmkm("status", home=home)  # a login: SoftHSM2 rewrites the token's file (its generation)
    assert token_object.read_bytes() != before


# --- rotation and enrollment cannot race ------------------------------------------------------


def _km(home: Path):  # type: ignore[no-untyped-def]
    from hsmkm.km.manager import KeyManager
    from hsmkm.km.publishers import publisher_for

    return KeyManager.open(home, trial_pin(home, "km"), actor="test", publisher=publisher_for(home))


def _request(email: str, code: str):  # type: ignore[no-untyped-def]
    from hsmkm.client.enroll import build_csr
    from hsmkm.protocol import EnrollRequest

    key = ec.generate_private_key(ec.SECP256R1())
    return EnrollRequest(email=email, code=code, csr_der=build_csr(key, email))


@pytest.fixture
def seam() -> Iterator[list]:  # type: ignore[type-arg]
    from hsmkm.km import enroll

    calls: list = []  # type: ignore[type-arg]
    original = enroll._before_commit
    yield calls
    enroll._before_commit = original


def test_a_rotation_between_sealing_and_commit_loses_nothing(home: Path, seam: list) -> None:  # type: ignore[type-arg]
    from hsmkm.km import enroll as km_enroll
    from hsmkm.km.rotation import rotate_archive_key

    code = add_user(home, "erin@example.com")
    km = _km(home)
    sealed_under: list[str] = []

    def rotate_now(k) -> None:  # type: ignore[no-untyped-def]
        sealed_under.append(k.archive_key.label)
        other = _km(home)
        result = rotate_archive_key(other)  # runs to its end: the old key is destroyed
        seam.append(result)
        other.close()

    km_enroll._before_commit = rotate_now
    km_enroll.enroll(km, _request("erin@example.com", code))
    assert sealed_under == ["hsmkm-archive-1"] and seam[0].new_label == "hsmkm-archive-2"
    assert not km.session.has_object("hsmkm-archive-1", _secret())
    rows = km.db.conn.execute("SELECT master_label FROM archive").fetchall()
    assert rows == [("hsmkm-archive-2",)]
    # The record opens under the key it names, and later rotations move it on.
    from hsmkm.km import archive

    record = archive.records_for_user(km.db.reader(), 1)[0]
    assert archive.open_outer(record, km.archive_key_by_label(record.master_label))
    km_enroll._before_commit = lambda k: None
    assert rotate_archive_key(km).records == 1
    km.close()
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_a_rotation_started_but_unfinished_at_commit_still_moves_the_record(home: Path, seam: list) -> None:  # type: ignore[type-arg]
    from hsmkm.km import enroll as km_enroll
    from hsmkm.km.rotation import rotate_archive_key

    code = add_user(home, "finn@example.com")
    km = _km(home)
    other = _km(home)

    def start_rotation(k) -> None:  # type: ignore[no-untyped-def]
        # The rotation's start is recorded (the new key current) before the enrollment commits.
        other.session.generate_aes_key("hsmkm-archive-2")
        with other.db.write() as tx:
            tx.meta.set("archive_rotation", json.dumps({"old": "hsmkm-archive-1", "new": "hsmkm-archive-2"}))
            tx.meta.set("archive_key_label", "hsmkm-archive-2")

    km_enroll._before_commit = start_rotation
    km_enroll.enroll(km, _request("finn@example.com", code))
    km_enroll._before_commit = lambda k: None
    assert km.db.conn.execute("SELECT master_label FROM archive").fetchall() == [("hsmkm-archive-2",)]
    assert rotate_archive_key(other).new_label == "hsmkm-archive-2"
    km.close()
    other.close()


def _secret() -> ObjectClass:
    from pkcs11 import ObjectClass

    return ObjectClass.SECRET_KEY


def test_a_half_made_new_master_key_is_replaced(home: Path) -> None:
    from hsmkm.km.rotation import master_key_is_sound, rotate_archive_key

    km = _km(home)
    # What a kill while SoftHSM2 writes the new key's attributes leaves: a key that cannot encrypt.
    km.session.generate_aes_key("hsmkm-archive-2", encrypt=False)
    assert not master_key_is_sound(km.session, "hsmkm-archive-2")
    assert rotate_archive_key(km).new_label == "hsmkm-archive-2"
    assert master_key_is_sound(km.session, "hsmkm-archive-2")
    km.close()
    code = add_user(home, "gail@example.com")
    assert enroll_epf(home, "gail@example.com", code, home.parent / "gail.epf").returncode == 0


def test_rotation_refuses_to_finish_with_a_record_under_a_destroyed_key(home: Path) -> None:
    from hsmkm import errors
    from hsmkm.km.rotation import rotate_archive_key

    code = add_user(home, "hank@example.com")
    enroll_epf(home, "hank@example.com", code, home.parent / "hank.epf")
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("UPDATE archive SET master_label = 'hsmkm-archive-0'")
    km = _km(home)
    with pytest.raises(errors.TokenError, match="no longer on the token"):
        rotate_archive_key(km)
    km.close()


# --- idempotent, resumable commands -------------------------------------------------------------


def test_an_enrollment_asked_again_gets_the_same_answer_and_no_second_certificate(home: Path) -> None:
    from hsmkm import errors
    from hsmkm.km import enroll as km_enroll

    code = add_user(home, "ivy@example.com")
    km = _km(home)
    req = _request("ivy@example.com", code)
    first = km_enroll.enroll(km, req)
    again = km_enroll.enroll(km, req)
    assert again == first
    assert km.db.conn.execute("SELECT COUNT(*) FROM certificates WHERE kind != 'ca'").fetchone()[0] == 2
    assert km.db.conn.execute("SELECT COUNT(*) FROM archive").fetchone()[0] == 1
    # Another signing key with the used code is refused, as is the right key after the window.
    with pytest.raises(errors.CodeRejected):
        km_enroll.enroll(km, _request("ivy@example.com", code))
    later = km.clock() + km_enroll.REPLAY_WINDOW + timedelta(minutes=1)
    km.clock = lambda: later
    with pytest.raises(errors.CodeRejected):
        km_enroll.enroll(km, req)
    km.close()


def test_the_kept_response_holds_no_key_in_the_clear(home: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from hsmkm.km import enroll as km_enroll
    from hsmkm.protocol import open_key

    code = add_user(home, "jack@example.com")
    km = _km(home)
    response = km_enroll.enroll(km, _request("jack@example.com", code))
    key = open_key(code, response, response.encryption)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    kept = b"".join(bytes(r[0]) for r in km.db.conn.execute("SELECT sealed FROM enroll_responses"))
    assert kept and der not in kept and der[-32:] not in (home / "km.db").read_bytes()
    km.close()


def test_directory_files_follow_the_database(home: Path, tmp_path: Path) -> None:
    code = add_user(home, "kate@example.com")
    enroll_epf(home, "kate@example.com", code, tmp_path / "kate.epf")
    certs = home / "pub" / "certs"
    enc, sign = certs / "kate@example.com.enc.crt", certs / "kate@example.com.sign.crt"
    assert enc.exists() and sign.exists()
    # Lost files (a crash before they were written) come back with a sync.
    enc.unlink()
    stale = certs / "nobody@example.com.enc.crt"
    stale.write_bytes(b"stale")
    hsmkm("directory", "sync", "--full", home=home)
    assert enc.exists() and not stale.exists()
    # A queued entry (left by a crash after a commit) is drained by the next command.
    enc.unlink()
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("INSERT INTO directory_outbox(email, queued_at) VALUES ('kate@example.com', 'x')")
    hsmkm("user", "list", home=home)
    assert enc.exists()
    # Revoked: the files go, msg encrypt finds no certificate, and revoking again is done.
    hsmkm("user", "revoke", "kate@example.com", home=home)
    assert not enc.exists() and not sign.exists()
    note = tmp_path / "note.eml"
    note.write_bytes(b"Subject: hi\r\n\r\nhello\r\n")
    run = hsmkm(
        "msg",
        "encrypt",
        "--km",
        str(home),
        "--to",
        "kate@example.com",
        str(note),
        "-o",
        str(tmp_path / "out.eml"),
        check=False,
    )
    assert run.returncode == 2 and "no encryption certificate" in run.stderr
    again = hsmkm("user", "revoke", "kate@example.com", "--json", home=home)
    assert again.json()["serials"] == []


def test_user_import_codes_file_comes_before_the_users(home: Path, tmp_path: Path) -> None:
    csv = tmp_path / "staff.csv"
    csv.write_text("email,name\nlou@example.com,Lou\nmay@example.com,May\n")
    blocked = tmp_path / "no-such-dir" / "codes.csv"
    run = hsmkm("user", "import", str(csv), "--codes-out", str(blocked), check=False)
    assert run.returncode == 2 and "codes file" in run.stderr
    assert hsmkm("user", "list", "--json", home=home).json()["users"] == []
    # A codes file left by an import killed before its commit names no user: replaced.
    out = tmp_path / "codes.csv"
    out.write_text("email,code\nlou@example.com,AAAA-BBBB\nmay@example.com,CCCC-DDDD\n")
    res = hsmkm("user", "import", str(csv), "--codes-out", str(out), "--json", home=home).json()
    assert res["users"] == 2
    codes = dict(line.split(",") for line in out.read_text().splitlines()[1:])
    # Run again after it committed: recognised as done, the file kept.
    assert hsmkm("user", "import", str(csv), "--codes-out", str(out), "--json", home=home).json()["already"] is True
    assert dict(line.split(",") for line in out.read_text().splitlines()[1:]) == codes
    enroll_epf(home, "lou@example.com", codes["lou@example.com"], tmp_path / "lou.epf")


def test_a_failed_import_commit_leaves_a_void_codes_file(home: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hsmkm.cli.main import cli
    from hsmkm.km import users

    csv = tmp_path / "staff.csv"
    csv.write_text("ned@example.com,Ned\n")
    out = tmp_path / "ned-codes.csv"
    real = users.import_users

    def failing(km, rows, progress, before_commit):  # type: ignore[no-untyped-def]
        def then_fail(codes):  # type: ignore[no-untyped-def]
            before_commit(codes)
            raise OSError("disk gone")

        return real(km, rows, progress, then_fail)

    users.import_users = failing  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(
            cli,
            ["--home", str(home), "user", "import", str(csv), "--codes-out", str(out)],
            env={"HSMKM_PIN_SOURCE": f"file:{home / 'secrets' / 'km.pin'}"},
        )
    finally:
        users.import_users = real
    assert result.exit_code != 0
    assert out.read_text().startswith("# VOID")
    assert hsmkm("user", "list", "--json", home=home).json()["users"] == []


def test_dead_writers_temporary_files_go_and_live_ones_stay(home: Path) -> None:
    crl_dir = home / "pub" / "crl"
    dead = crl_dir / ".full.crl.dead1234.tmp"
    dead.write_bytes(b"half")
    live = crl_dir / ".full.crl.live5678.tmp"
    live.write_bytes(b"being written")
    with open(live, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        hsmkm("crl", "publish", home=home)
        assert not dead.exists() and live.exists()
    (home / ".tmp").mkdir(exist_ok=True)
    (home / ".tmp" / ".x@example.com.enc.crt.abcd.tmp").write_bytes(b"")
    (home / ".km.json.abcd.tmp").write_bytes(b"")
    hsmkm("status", home=home)
    assert not list(home.rglob(".x@example.com*")) and not (home / ".km.json.abcd.tmp").exists()
    # pub/certs is too large to list on every command: a full sync tidies it.
    (home / "pub" / "certs" / ".y@example.com.enc.crt.abcd.tmp").write_bytes(b"")
    hsmkm("directory", "sync", "--full", home=home)
    assert not list(home.rglob(".y@example.com*"))


# --- a home can be copied or moved ---------------------------------------------------------------


def test_a_copied_home_runs_on_its_own_files_and_the_original_is_untouched(home: Path, tmp_path: Path) -> None:
    code = add_user(home, "olga@example.com")
    enroll_epf(home, "olga@example.com", code, tmp_path / "olga.epf")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(home), str(copy)], check=True)
    assert str(home) not in (copy / "km.json").read_text()
    before = tree_digest(home)
    # The original's token store and PINs away: the copy cannot reach them even by mistake.
    (home / "softhsm").rename(tmp_path / "softhsm.away")
    (home / "secrets").rename(tmp_path / "secrets.away")
    try:
        assert hsmkm("status", "--json", home=copy).json()["token"]["label"] == "hsmkm"
        code2 = add_user(copy, "pete@example.com")
        enroll_epf(copy, "pete@example.com", code2, tmp_path / "pete.epf")
        hsmkm("archive", "rotate", home=copy)
        rid = hsmkm("recovery", "request", "olga@example.com", "--reason", "copy test", "--json", home=copy).json()[
            "id"
        ]
        hsmkm("recovery", "approve", str(rid), "--officer", "officer1", "--yes", home=copy)
        hsmkm("recovery", "approve", str(rid), "--officer", "officer2", "--yes", home=copy)
        hsmkm(
            "recovery",
            "complete",
            str(rid),
            "--out",
            str(tmp_path / "olga.p12"),
            "--password-source",
            "env:P",
            env={"P": "p12-pass"},
            home=copy,
        )
        assert (tmp_path / "olga.p12").stat().st_size > 0
        assert hsmkm("audit", "verify", "--json", home=copy).json()["ok"] is True
    finally:
        (tmp_path / "softhsm.away").rename(home / "softhsm")
        (tmp_path / "secrets.away").rename(home / "secrets")
    assert tree_digest(home) == before
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_a_first_release_home_extracted_elsewhere_works_where_it_is(tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "v1-home.tar.gz"
    with tarfile.open(fixture) as tar:
        tar.extractall(tmp_path, filter="data")
    home = tmp_path / "km"
    assert "/tmp/hsmkm-v1-fixture/km" in (home / "km.json").read_text()
    hsmkm("db", "upgrade", home=home)
    st = hsmkm("status", "--json", home=home).json()
    assert st["counts"]["users"] == 3
    assert (
        f"directories.tokendir = {home.absolute() / 'softhsm' / 'tokens'}"
        in (home / "softhsm" / "softhsm2.conf").read_text()
    )
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True
    code = add_user(home, "quinn@example.com")
    enroll_epf(home, "quinn@example.com", code, tmp_path / "quinn.epf")
    hsmkm("archive", "rotate", home=home)
    # The first release's archive moves to per-record shares before any recovery (its
    # officers never attested an officer set, so they approve once trusting the fingerprints).
    mid = hsmkm("archive", "migrate", "--json", home=home).json()["id"]
    for officer in ("officer1", "officer3"):
        hsmkm("recovery", "approve", str(mid), "--officer", officer, "--yes", "--trust-officer-set", home=home)
    hsmkm("archive", "migrate", "--request", str(mid), home=home)
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "v1 copy", "--json", home=home).json()["id"]
    for officer in ("officer1", "officer3"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", "--trust-officer-set", home=home)
    hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(tmp_path / "alice.p12"),
        "--password-source",
        "env:P",
        env={"P": "p12-pass"},
        home=home,
    )
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_a_token_enrollment_whose_answer_was_lost_is_answered_again(
    home: Path, module_path: str, user_token: MakeToken
) -> None:
    from conftest import softhsm_conf, softhsm_env
    from hsmkm.client.enroll import build_csr
    from hsmkm.keys.algorithms import KeyAlgorithm
    from hsmkm.keys.token_keystore import TokenKeystore
    from hsmkm.keys.uri import Pkcs11Uri
    from hsmkm.km import enroll as km_enroll
    from hsmkm.protocol import EnrollRequest

    user_token("sam", "sam-pin-1234", store=softhsm_conf(home))
    code = add_user(home, "sam@example.com")
    uri = f"pkcs11:token=sam?module-path={module_path}&pin-source=env:SAM_PIN"
    # The first attempt: the key is made on the token, the KM commits, the answer is lost.
    km = _km(home)  # loads the module on the home's store
    ks = TokenKeystore.open(Pkcs11Uri.parse(uri), "sam-pin-1234")
    key = ks.generate_signing_key(KeyAlgorithm.P256)
    first = km_enroll.enroll(km, EnrollRequest("sam@example.com", code, build_csr(key, "sam@example.com")))
    km.close()
    # The retry through the CLI takes up the same key and gets the same certificates.
    run = hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "sam@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        uri,
        "--json",
        env={"CODE": code, "SAM_PIN": "sam-pin-1234", **softhsm_env(home)},
    )
    from cryptography import x509

    assert run.json()["sign_serial"] == f"{x509.load_der_x509_certificate(first.sign_cert_der).serial_number:x}"
    with sqlite3.connect(home / "km.db") as conn:
        n = conn.execute(
            "SELECT COUNT(*) FROM certificates c JOIN users u ON u.id = c.user_id WHERE u.email = 'sam@example.com'"
        ).fetchone()[0]
    assert n == 2
