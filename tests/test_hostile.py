"""Every hostile input is refused in one line: ``hsmkm: error: …`` on stderr and nothing else,
the exit code CLI.md gives, no traceback or internal error, within 10 s of CPU and 256 MiB,
and nothing in the KM's home or the client's files changed.

The real CLI runs in subprocesses for a representative set of each class (addresses, names,
secret sources, keystores, messages, CMS structures, damaged homes, ids, usage errors, output
paths); the bulk of the generated inputs (tests/hostile_inputs.py) goes through the parsers in
one worker subprocess, measured the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import hostile_inputs as hi
from conftest import HSMKM, hsmkm
from hsmkm.cms import enveloped
from hsmkm.keys.base import KeyEntry
from hsmkm.keys.epf import EpfKeystore

CPU_LIMIT_S = 10.0  # "no hang": CPU time, which a loaded machine does not stretch
WALL_LIMIT_S = 120.0  # a process blocked for good (a FIFO) is killed here, and fails
RSS_LIMIT_MIB = 256
PW = "correct-horse-battery"
MEASURED_CHILD = Path(__file__).with_name("measured_child.py")


@dataclass
class Measured:
    returncode: int
    stdout: bytes
    stderr: str
    cpu_s: float
    rss_mib: float
    killed: bool


def run_measured(argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes | None = None) -> Measured:
    """Run ``argv`` with its own rusage (wait4, in tests/measured_child.py): CPU seconds and peak RSS of that
    process alone."""
    out_path, err_path, usage_path = cwd / ".run.out", cwd / ".run.err", cwd / ".run.usage"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(MEASURED_CHILD), *argv],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**env, "HSMKM_TEST_RUSAGE": str(usage_path)},
            cwd=cwd,
            start_new_session=True,
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(WALL_LIMIT_S, kill)
        timer.start()
        if stdin is not None:
            assert proc.stdin is not None
            writer = threading.Thread(target=_feed, args=(proc.stdin, stdin))
            writer.start()
        proc.wait()
        timer.cancel()
        if stdin is not None:
            writer.join()
    stdout, stderr = out_path.read_bytes(), err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    if killed.is_set():
        return Measured(proc.returncode, stdout, stderr, WALL_LIMIT_S, 0.0, True)
    usage = json.loads(usage_path.read_text())
    usage_path.unlink()
    return Measured(proc.returncode, stdout, stderr, usage["cpu_s"], usage["maxrss_kib"] / 1024, False)


def _feed(pipe: object, data: bytes) -> None:
    try:
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.close()  # type: ignore[attr-defined]
    except BrokenPipeError:
        pass


def _database_content(path: Path) -> str | None:
    """A digest of what an SQLite database holds (its SQL dump), or None if it does not open:
    its pages move between the file and its WAL when nothing changes."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return "sql:" + hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None


def tree_state(*roots: Path, tokens: bool = False) -> dict[str, tuple[str, int]]:
    """Every file under ``roots`` by content and mode; an SQLite database by what it holds.
    SQLite's shared-memory index and SoftHSM2's token.object (rewritten with a new generation
    count at every login, whatever the command) are left out unless ``tokens``; the token's key
    objects are in."""
    state: dict[str, tuple[str, int]] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if (
                path.name.endswith("-shm")
                or path.name.startswith(".run.")
                or (path.name == "token.object" and not tokens)
            ):
                continue
            if path.name.endswith(".db-wal") and (
                path.stat().st_size == 0 or _database_content(path.with_name(path.name[:-4])) is not None
            ):
                continue  # empty (SQLite makes it at any open, ours included), or part of the database's content
            if path.name.endswith(".db") and path.is_file() and (content := _database_content(path)) is not None:
                state[str(path)] = (content, path.stat().st_mode)
            elif path.is_symlink():
                state[str(path)] = ("link:" + os.readlink(path), 0)
            elif path.is_file():
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
            elif path.is_dir():
                state[str(path)] = ("dir", path.stat().st_mode)
    return state


@dataclass
class World:
    root: Path
    home: Path
    client: Path  # the client's working directory: alice.epf, messages
    env: dict[str, str]
    alice: KeyEntry  # her signing key and certificate, read from her .epf
    alice_enc: KeyEntry

    def cli(self, *args: str) -> list[str]:
        return [HSMKM, "--home", str(self.home), *args]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    home, client = root / "home", root / "client"
    client.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMKM_")}
    env.update(
        {"PW": PW, "HOME": str(root), "XDG_CACHE_HOME": str(root / "cache"), "XDG_CONFIG_HOME": str(root / "config")}
    )
    hsmkm("init", "--ca-subject", "CN=Hostile KM CA,O=hsmkm tests", "--ca-key", "p256", home=home, env=env)
    code = hsmkm("--json", "user", "add", "alice@example.com", "--name", "Alice", home=home, env=env).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "alice@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(client / "alice.epf"),
        "--password-source",
        "env:PW",
        env={**env, "CODE": code},
    )
    hsmkm("crl", "publish", home=home, env=env)
    hsmkm("crl", "fetch", "--km", str(home), env=env)
    (client / "note.eml").write_bytes(b"From: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
    hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(client / "alice.epf"),
        "--password-source",
        "env:PW",
        str(client / "note.eml"),
        "-o",
        str(client / "signed.eml"),
        env=env,
    )
    ks = EpfKeystore.open(client / "alice.epf", PW)
    sign, enc = ks.signing_entry(), ks.encryption_entries()[0]
    assert sign is not None
    return World(root, home, client, env, sign, enc)


def refused(
    world: World,
    argv: list[str],
    code: int,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    extra_env: dict[str, str] | None = None,
    watch: tuple[Path, ...] = (),
    tokens: bool = False,
) -> Measured:
    """Run ``argv`` and check that it was refused as the contract says, changing nothing
    (``tokens``: not even SoftHSM2's token files, for what is refused before any login)."""
    roots = (world.home, world.client, world.root / "cache", *watch)
    before = tree_state(*roots, tokens=tokens)
    got = run_measured(argv, {**world.env, **(extra_env or {})}, cwd or world.client, stdin)
    what = " ".join(a if len(a) < 80 else a[:80] + "…" for a in argv[1:])
    assert not got.killed, f"{what}: still running after {WALL_LIMIT_S} s (a hang)"
    assert got.returncode == code, f"{what}: exit {got.returncode}, not {code}:\n{got.stderr}"
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsmkm: error: "), (
        f"{what}: stderr is not one error line:\n{got.stderr}"
    )
    assert "internal error" not in got.stderr and "Traceback" not in got.stderr, f"{what}: {got.stderr}"
    assert got.cpu_s <= CPU_LIMIT_S, f"{what}: {got.cpu_s:.1f} s of CPU"
    assert got.rss_mib <= RSS_LIMIT_MIB, f"{what}: peak RSS {got.rss_mib:.0f} MiB"
    assert tree_state(*roots, tokens=tokens) == before, f"{what}: changed files on refusal"
    _record(what, got)
    return got


def _record(what: str, got: Measured) -> None:
    """With HOSTILE_STATS set, one JSON line per refusal: what the figures in a report come from."""
    path = os.environ.get("HOSTILE_STATS")
    if path:
        with open(path, "a") as fh:
            fh.write(
                json.dumps({"what": what, "exit": got.returncode, "cpu_s": got.cpu_s, "rss_mib": got.rss_mib}) + "\n"
            )


# --- usage --------------------------------------------------------------------------------------

USAGE_ERRORS = [
    ["bogus"],
    ["user", "bogus"],
    ["user", "add"],
    ["user", "add", "a@example.com", "--nope"],
    ["user", "revoke", "alice@example.com", "--reason"],
    ["msg", "encrypt", "--cipher", "rot13", "--km", "x"],
    ["recovery", "approve", "not-a-number", "--officer", "officer1"],
    ["user", "add", "a@example.com", "extra"],
    ["--nope"],
    ["msg", "verify"],
    ["user", "import", "/nonexistent/users.csv"],
    ["crl", "publish", "--next-update-hours", "x"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a))
def test_usage_errors_are_one_line_exit_2(world: World, args: list[str]) -> None:
    refused(world, world.cli(*args), 2)


# --- addresses and names -----------------------------------------------------------------------

_GOOD, _BAD = hi.address_cases()
_BAD_IN_ARGV = [a for a in _BAD if "\x00" not in a]  # argv cannot carry a NUL
CLI_ADDRESSES = [*_BAD_IN_ARGV[::3], "../../../../PWNED/evil@example.com"]


@pytest.mark.parametrize("address", CLI_ADDRESSES, ids=repr)
def test_hostile_address_refused_by_user_add(world: World, address: str) -> None:
    got = refused(world, world.cli("user", "add", address), 2, tokens=True)
    assert "not an email address" in got.stderr and "\x1b" not in got.stderr


def test_traversing_address_writes_nothing_outside(world: World) -> None:
    """The address of the report: refused by user add, user show, directory show and as a
    recipient, and no file appears anywhere but where it should."""
    evil = "../../../../PWNED/evil@example.com"
    for args in (["user", "add", evil], ["user", "show", evil], ["directory", "show", evil], ["user", "revoke", evil]):
        refused(world, world.cli(*args), 2, cwd=world.home / "pub" / "certs", watch=(world.root,), tokens=True)
    refused(
        world,
        [HSMKM, "msg", "encrypt", "--km", str(world.home), "--to", evil, "note.eml", "-o", "x.eml"],
        2,
        watch=(world.root,),
    )
    assert not list(world.root.rglob("PWNED")) and not list(Path("/").glob("PWNED"))


def test_file_names_from_addresses_stay_in_their_folder(world: World, tmp_path: Path) -> None:
    from hsmkm import addresses, errors
    from hsmkm.certnames import cert_files

    folder = tmp_path / "pub" / "certs"
    for bad in _BAD:
        with pytest.raises(errors.BadInput):
            cert_files(folder, bad)  # the directory's files are named only through it
    for good in _GOOD:
        assert addresses.address_file(folder, good, ".enc.crt").parent == folder
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


_NGOOD, _NBAD = hi.name_cases()


@pytest.mark.parametrize("name", [n for n in _NBAD if "\x00" not in n], ids=lambda n: repr(n[:24]))  # argv has no NUL
def test_hostile_name_refused_by_user_add(world: World, name: str) -> None:
    refused(world, world.cli("user", "add", "named@example.com", "--name", name), 2, tokens=True)


@pytest.mark.parametrize("case", sorted(hi.csv_cases()))
def test_hostile_csv_refused_by_user_import(world: World, case: str) -> None:
    if case == "only-commas":
        return  # no rows: nothing to refuse (the bulk test checks it does not crash)
    path = world.client / f"{case}.csv"
    path.write_bytes(hi.csv_cases()[case])
    try:
        refused(world, world.cli("user", "import", str(path), "--codes-out", str(world.root / f"{case}.codes")), 2)
        assert not (world.root / f"{case}.codes").exists()
    finally:
        path.unlink()


def test_output_escapes_what_a_database_writer_put_in_names(world: World, tmp_path: Path) -> None:
    """A database writer (who can edit km.db) plants terminal escapes: people see them escaped."""
    home = tmp_path / "home"
    shutil.copytree(world.home, home, symlinks=True)
    evil_name = "\x1b]0;owned\x07\x1b[2J\u202eeman"
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute(
            "INSERT INTO users(email, name, status, created_at) VALUES (?, ?, 'pending', '2026-01-01')",
            ("mallory@example.com", evil_name),
        )
    for args in (["user", "list"], ["user", "show", "mallory@example.com"]):
        out = hsmkm(*args, home=home, env=world.env).stdout
        assert "mallory@example.com" in out
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
        assert "\\x1b]0;owned\\x07" in out
    as_json = hsmkm("--json", "user", "list", home=home, env=world.env).stdout
    assert "\x1b" not in as_json and json.loads(as_json)["users"][-1]["name"] == evil_name


# --- secret sources ----------------------------------------------------------------------------


def _secret_files(root: Path) -> dict[str, str]:
    """name -> the file: source that must be refused."""
    d = root / "secrets-hostile"
    d.mkdir(exist_ok=True)
    (d / "binary").write_bytes(bytes(range(256)))
    (d / "big").write_bytes(b"x" * ((4 << 10) + 1) + b"\n")
    (d / "controls").write_bytes(b"pass\x1bword\n")
    (d / "empty").write_bytes(b"")
    (d / "newline-only").write_bytes(b"\n")
    if not (d / "fifo").exists():
        os.mkfifo(d / "fifo")
    return {
        "dev-zero": "file:/dev/zero",
        "dev-urandom": "file:/dev/urandom",
        "fifo": f"file:{d / 'fifo'}",
        "directory": f"file:{d}",
        "missing": f"file:{d / 'missing'}",
        "binary": f"file:{d / 'binary'}",
        "big": f"file:{d / 'big'}",
        "controls": f"file:{d / 'controls'}",
        "empty": f"file:{d / 'empty'}",
        "newline-only": f"file:{d / 'newline-only'}",
        "literal": "hunter2",
        "env-unset": "env:NO_SUCH_VAR",
    }


@pytest.mark.parametrize(
    "case",
    [
        "dev-zero",
        "dev-urandom",
        "fifo",
        "directory",
        "missing",
        "binary",
        "big",
        "controls",
        "empty",
        "newline-only",
        "literal",
        "env-unset",
    ],
)
def test_hostile_secret_sources_refused(world: World, case: str) -> None:
    source = _secret_files(world.root)[case]
    refused(world, [HSMKM, "keystore", "info", str(world.client / "alice.epf"), "--password-source", source], 2)
    refused(world, world.cli("--pin-source", source, "user", "list"), 2)


# --- keystores ---------------------------------------------------------------------------------


def _hostile_keystores(world: World) -> Iterator[tuple[str, Path]]:
    d = world.root / "keystores-hostile"
    d.mkdir(exist_ok=True)
    if not (d / "fifo").exists():
        os.mkfifo(d / "fifo")
    yield "fifo", d / "fifo"
    yield "dev-zero", Path("/dev/zero")
    yield "directory", d
    big = d / "big.epf"
    with open(big, "wb") as fh:
        fh.truncate((16 << 20) + 1)
    yield "over-16MiB", big
    valid = (world.client / "alice.epf").read_bytes()
    for name, data in [
        ("empty", b""),
        ("garbage", os.urandom(3000)),
        ("truncated", valid[: len(valid) // 2]),
        ("trailing", valid + b"\x00"),
    ]:
        (d / f"{name}.epf").write_bytes(data)
        yield name, d / f"{name}.epf"
    legacy = _legacy_p12(world)
    for where in ("mac", "key", "content"):
        for count in (2**31 - 1, 0, 2**70):
            p = d / f"{where}-{count}.p12"
            p.write_bytes(hi.pkcs12_with_iterations(legacy, where, count))
            yield f"{where}-iterations-{count}", p


def _legacy_p12(world: World) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import pkcs12

    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(PW.encode())
    )
    return pkcs12.serialize_key_and_certificates(b"alice", world.alice.key, world.alice.certificate, None, enc)


def test_hostile_keystores_refused(world: World) -> None:
    cases = list(_hostile_keystores(world))
    assert len(cases) >= 16
    for _name, path in cases:
        refused(world, [HSMKM, "keystore", "info", str(path), "--password-source", "env:PW"], 2)
    # the legacy file itself opens: the cap refuses the counts, not the format
    ok = world.root / "legacy-ok.p12"
    ok.write_bytes(_legacy_p12(world))
    assert hsmkm("keystore", "info", str(ok), "--password-source", "env:PW", env=world.env).returncode == 0


# --- messages ----------------------------------------------------------------------------------


def test_devices_fifos_and_directories_refused_as_messages(world: World) -> None:
    d = world.root / "messages-hostile"
    d.mkdir(exist_ok=True)
    if not (d / "fifo").exists():
        os.mkfifo(d / "fifo")
    epf = ["--keystore", str(world.client / "alice.epf"), "--password-source", "env:PW"]
    for source in ("/dev/zero", "/dev/urandom", str(d / "fifo"), str(d)):
        refused(world, [HSMKM, "msg", "verify", "--km", str(world.home), source], 2)
        refused(world, [HSMKM, "msg", "sign", *epf, source, "-o", "out.eml"], 2)
        refused(world, [HSMKM, "msg", "decrypt", *epf, source, "-o", "out.eml"], 2)
        refused(
            world,
            [HSMKM, "msg", "encrypt", "--km", str(world.home), "--to", "alice@example.com", source, "-o", "out.eml"],
            2,
        )


def test_non_smime_input_refused_before_it_is_read_whole(world: World) -> None:
    """A 4 GiB text message (sparse) to msg verify: refused from its headers, in little memory."""
    big = world.root / "big.eml"
    with open(big, "wb") as fh:
        fh.write(b"From: x\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
        fh.truncate(4 << 30)
    try:
        got = refused(world, [HSMKM, "msg", "verify", "--km", str(world.home), str(big)], 2)
        assert "not a signed S/MIME message" in got.stderr
        # and as a pipe: stdin is a message source too
        refused(
            world,
            [HSMKM, "msg", "verify", "--km", str(world.home), "-"],
            2,
            stdin=b"Content-Type: text/html\r\n\r\n" + b"<p>" * 300_000,
        )
    finally:
        big.unlink()


def test_output_that_names_a_directory_refused(world: World) -> None:
    out = world.root / "outdir"
    out.mkdir(exist_ok=True)
    epf = ["--keystore", str(world.client / "alice.epf"), "--password-source", "env:PW"]
    refused(world, [HSMKM, "msg", "sign", *epf, "note.eml", "-o", str(out)], 2, watch=(out,))
    refused(world, [HSMKM, "msg", "verify", "--km", str(world.home), "signed.eml", "-o", str(out)], 2, watch=(out,))
    refused(
        world,
        [HSMKM, "msg", "encrypt", "--km", str(world.home), "--to", "alice@example.com", "note.eml", "-o", str(out)],
        2,
        watch=(out,),
    )
    refused(world, [HSMKM, "msg", "decrypt", *epf, "signed.eml", "-o", str(out)], 2, watch=(out,))
    csv_path = world.client / "one.csv"
    csv_path.write_text("email,name\nnewbie@example.com,New\n")
    try:
        refused(world, world.cli("user", "import", str(csv_path), "--codes-out", str(out)), 2, watch=(out,))
    finally:
        csv_path.unlink()


def _signed_cases(world: World) -> dict[str, tuple[bytes, int]]:
    cases = hi.signed_attacks(world.alice)
    good = hi.signed_message(world.alice)
    for name, (data, code) in list(cases.items()):
        if data[:1] == b"\x30" and name.startswith(("econtent", "sigalg", "signing-time", "der-trailing")):
            cases[name + "-as-smime"] = (hi.as_smime(data), code)
    cases["smime-bad-base64"] = (hi.as_smime(good)[:-10] + b"!!!!\r\n", 2)
    cases["smime-no-body"] = (b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\n", 2)
    cases["multipart-no-boundary"] = (b"Content-Type: multipart/signed\r\n\r\nx\r\n", 2)
    cases["multipart-one-part"] = (b'Content-Type: multipart/signed; boundary="b"\r\n\r\n--b\r\nx\r\n--b--\r\n', 2)
    cases["empty"] = (b"", 2)
    cases["headers-only"] = (b"Subject: x\r\n\r\n", 2)
    return cases


@pytest.mark.slow
def test_hostile_signed_messages_refused(world: World) -> None:
    cases = _signed_cases(world)
    assert len(cases) >= 30
    path = world.client / "hostile.p7m"
    try:
        for name, (data, code) in cases.items():
            path.write_bytes(data)
            refused(world, [HSMKM, "msg", "verify", "--km", str(world.home), str(path), "-o", "content.txt"], code)
            assert not (world.client / "content.txt").exists(), name
    finally:
        path.unlink()
    # the builder itself makes messages that verify: the refusals above are for the attacks
    path.write_bytes(hi.signed_message(world.alice))
    assert hsmkm("msg", "verify", "--km", str(world.home), str(path), env=world.env).returncode == 0
    path.unlink()


@pytest.mark.slow
def test_hostile_enveloped_messages_refused(world: World) -> None:
    cert = world.alice_enc.certificate
    gcm = enveloped.encrypt(b"Content-Type: text/plain\r\n\r\nsecret\r\n", [cert], enveloped.ContentCipher.AES256_GCM)
    cbc = enveloped.encrypt(b"Content-Type: text/plain\r\n\r\nsecret\r\n", [cert], enveloped.ContentCipher.AES256_CBC)
    cases = hi.enveloped_attacks(gcm, cbc)
    names = [
        "gcm-nonce-0",
        "gcm-nonce-1",
        "gcm-nonce-5000",
        "cbc-iv-0",
        "cbc-iv-8",
        f"gcm-icv-{1 << 40}",
        "gcm-trailing",
        "cbc-as-unknown",
        "gcm-truncated",
        "gcm-params-null",
    ]
    chosen = {k: cases[k] for k in names}
    path = world.client / "hostile.p7m"
    epf = ["--keystore", str(world.client / "alice.epf"), "--password-source", "env:PW"]
    try:
        for name, data in chosen.items():
            for form in (data, hi.as_smime(data, "authEnveloped-data")):
                path.write_bytes(form)
                refused(world, [HSMKM, "msg", "decrypt", *epf, str(path), "-o", "plain.txt"], 2)
                assert not (world.client / "plain.txt").exists(), name
    finally:
        path.unlink()


def test_certificates_cryptography_cannot_parse_refused(world: World) -> None:
    """An x400Address in a certificate's subjectAltName makes cryptography raise its own
    exception type at the first look at the extensions: refused as malformed wherever it comes."""
    bad = world.client / "x400.crt"
    bad.write_bytes(
        hi.x400_certificate(world.alice_enc.certificate.public_bytes(serialization.Encoding.DER), b"alice@example.com")
    )
    try:
        refused(
            world, [HSMKM, "msg", "encrypt", "--km", str(world.home), "--cert", str(bad), "note.eml", "-o", "x.eml"], 2
        )
    finally:
        bad.unlink()


# --- a damaged home, ids ---------------------------------------------------------------------


def _damaged_homes(world: World, base: Path) -> Iterator[tuple[str, Path]]:
    from hsmkm.keys.softhsm import ensure_store_config

    ca = (world.home / "pub" / "ca.crt").read_bytes()
    config = (world.home / "km.json").read_bytes()
    db = (world.home / "km.db").read_bytes()
    damage: list[tuple[str, str, bytes]] = [
        ("ca-truncated", "pub/ca.crt", ca[:100]),
        ("ca-garbage", "pub/ca.crt", os.urandom(500)),
        ("ca-empty", "pub/ca.crt", b""),
        ("ca-flipped", "pub/ca.crt", ca[:30] + bytes([ca[30] ^ 0xFF]) + ca[31:]),
        ("config-list", "km.json", b"[1, 2]"),
        ("config-binary", "km.json", b"\xff\xfe\x00"),
        ("config-truncated", "km.json", config[:40]),
        ("config-wrong-types", "km.json", config.replace(b'"km_token": "', b'"km_token": 5, "x": "')),
        ("db-truncated", "km.db", db[:5000]),
        ("db-garbage", "km.db", os.urandom(8192)),
        ("db-empty-sqlite", "km.db", b""),
    ]
    for name, rel, data in damage:
        home = base / name
        shutil.copytree(world.home, home, symlinks=True)
        # A moved home's SoftHSM2 config is pointed at its own store on first use: done here,
        # before the damage, so that the refusal alone is watched for changes.
        ensure_store_config(home / "softhsm" / "softhsm2.conf")
        if rel == "km.db":  # the damage is the file itself, not what a WAL would lay over it
            for extra in ("km.db-wal", "km.db-shm"):
                (home / extra).unlink(missing_ok=True)
        (home / rel).write_bytes(data)
        yield name, home


@pytest.mark.slow
def test_damaged_home_refused(world: World, tmp_path: Path) -> None:
    homes = list(_damaged_homes(world, tmp_path))
    for name, home in homes:
        if name.startswith("ca-"):  # the commands that read the CA certificate
            commands = [
                ["--home", str(home), "status"],
                ["--home", str(home), "crl", "publish"],
                ["msg", "verify", "--km", str(home), str(world.client / "signed.eml")],
                ["crl", "fetch", "--km", str(home)],
            ]
        else:
            commands = [
                ["--home", str(home), *args]
                for args in (["status"], ["user", "list"], ["user", "add", "new@example.com"])
            ]
        for argv in commands:
            refused(world, [HSMKM, *argv], 2, watch=(home,))


@pytest.mark.parametrize("request_id", [str(2**70), str(2**63), "-1", "0", "99999"])
def test_request_ids_out_of_range_refused(world: World, request_id: str) -> None:
    refused(world, world.cli("recovery", "approve", request_id, "--officer", "officer1"), 2)
    refused(world, world.cli("recovery", "complete", request_id, "--reenable"), 2)


# --- the bulk, in one measured worker ------------------------------------------------------------


def test_bulk_generated_inputs_refused_by_the_parsers(world: World) -> None:
    """Hundreds of generated inputs through the parsers: only hsmkm's own errors come out,
    hostile ones are refused, valid ones accepted, each in little CPU, in bounded memory."""
    worker = Path(hi.__file__)
    env = {**world.env, "PYTHONPATH": os.pathsep.join([str(worker.parent), *sys.path])}
    got = run_measured([sys.executable, str(worker)], env, world.root)
    assert not got.killed and got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.decode().splitlines()]
    assert len(rows) >= 550
    crashes = [r for r in rows if r["outcome"] == "crash"]
    assert not crashes, crashes[:5]
    wrong = [r for r in rows if r["expect"] != "any" and r["outcome"] != r["expect"]]
    assert not wrong, wrong[:5]
    slow = [r for r in rows if r["cpu_s"] > CPU_LIMIT_S]
    assert not slow, slow
    assert got.rss_mib <= RSS_LIMIT_MIB, got.rss_mib
    parsers = {r["parser"] for r in rows}
    assert parsers >= {"address", "name", "signed", "ber", "enveloped", "pkcs12", "crl", "csr", "uri", "csv"}
    for r in rows:
        _record(f"bulk {r['parser']} {r['label']}", Measured(0, b"", "", r["cpu_s"], got.rss_mib, False))
    unknown_keys = [r for r in rows if r["label"].startswith("csr-")]
    assert unknown_keys and all(r["error"] == "UnsupportedAlgorithm" for r in unknown_keys), unknown_keys
