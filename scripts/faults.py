"""The fault campaign: kill -9 at syscall points in each state-changing command, then check.

Each command runs on a copy of a prepared home under strace, which kills it (SIGKILL, on
entry to the Nth call of one syscall: the call itself never happens) at a point where it
writes: write/pwrite64/ftruncate/fsync/fdatasync/rename/unlink/link, or an openat that
creates or opens for writing, on a file of the home or of the command's own outputs. The
points come from an untouched run of the same command, traced with the paths of its file
descriptors. After the kill, the invariants:

  tokens   every token of the store is there and the KM and officer tokens log in
  rerun    the same command run again completes (and what it made is whole)
  audit    ``hsmkm audit verify`` passes
  secrets  no unencrypted private key and no PIN outside secrets/*.pin
  temps    no temporary file (.*.tmp, .*.pending) left in the home or the outputs

Usage: scripts/faults [--smoke] [--per-command N] [--only NAME,...] [--json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
HSMKM = str(BIN / "hsmkm")
PYTHON = str(BIN / "python")
PW = "faults-pass-1"
P12_PW = "faults-p12-pass"
SYSCALLS = ("write", "pwrite64", "ftruncate", "fsync", "fdatasync", "rename", "unlink", "link", "openat")
INVARIANTS = ("tokens", "rerun", "audit", "secrets", "temps")
TOKENS = ("hsmkm", "officer1", "officer2", "officer3")
# Unencrypted PKCS#8 (version 0, then the algorithm) and PEM private keys.
PLAIN_KEY_MARKERS = (
    bytes.fromhex("020100301306072a8648ce3d0201"),
    bytes.fromhex("020100300d06092a864886f70d0101010500"),
    b"PRIVATE KEY-----",
)
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")
_OPEN_PATH = re.compile(r'^AT_FDCWD(?:<[^>]*>)?, "([^"]*)", ([A-Z_|]+)')


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMKM_")}
    env.update(extra or {})
    return env


def run(argv: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env_for(env), timeout=timeout)


def km(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([HSMKM, "--home", str(home), *args], env)


def must(proc: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if proc.returncode != 0:
        raise SystemExit(f"faults: setting up failed at {what}: {proc.stderr.strip()}")
    return proc


# --- the commands ------------------------------------------------------------------------------


@dataclass
class Case:
    """One injected run's directory: the home and the command's outputs."""

    base: Path

    @property
    def home(self) -> Path:
        return self.base / "km"

    @property
    def work(self) -> Path:
        return self.base / "work"

    def state(self) -> dict[str, str]:
        return json.loads((self.work / "state.json").read_text())


@dataclass
class Scenario:
    name: str
    prepare: Callable[[Case], None]
    argv: Callable[[Case], list[str]]
    env: Callable[[Case], dict[str, str]] = lambda c: {}
    # After the re-run: does what the command made hold together? (None = yes, else why not)
    verify: Callable[[Case, subprocess.CompletedProcess[str]], str | None] = lambda c, p: None
    # A re-run that exits non-zero may still be the completed command (e.g. "already done").
    accept: Callable[[Case, subprocess.CompletedProcess[str]], bool] = lambda c, p: False


def save_state(case: Case, **values: str) -> None:
    case.work.mkdir(parents=True, exist_ok=True)
    state = case.state() if (case.work / "state.json").exists() else {}
    state.update(values)
    (case.work / "state.json").write_text(json.dumps(state))


def enroll_argv(case: Case, email: str, code_env: str, keystore: Path) -> list[str]:
    return [HSMKM, "enroll", "--km", str(case.home), "--email", email, "--code-source", f"env:{code_env}",
            "--keystore", str(keystore), "--password-source", "env:PW", "--json"]


def db(case: Case) -> sqlite3.Connection:
    return sqlite3.connect(case.home / "km.db")


def py(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run([PYTHON, "-c", code, *args])


_KEYSTORE_CHECK = """
import json, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from hsmkm.keys.epf import EpfKeystore
ks = EpfKeystore.open(Path(sys.argv[1]), sys.argv[2])
der = lambda c: c.public_bytes(serialization.Encoding.DER).hex()
sign = ks.signing_entry()
print(json.dumps({"sign": der(sign.certificate) if sign else None,
                  "enc": [der(e.certificate) for e in ks.encryption_entries()]}))
"""


def verify_keystore(case: Case, email: str, keystore: Path) -> str | None:
    proc = py(_KEYSTORE_CHECK, str(keystore), PW)
    if proc.returncode != 0:
        return f"keystore does not open: {proc.stderr.strip()[-200:]}"
    got = json.loads(proc.stdout)
    with db(case) as conn:
        uid = conn.execute("SELECT id FROM users WHERE email = ?", (email,)).fetchone()[0]
        current = {k: bytes(d).hex() for k, d in conn.execute(
            "SELECT kind, der FROM certificates WHERE user_id = ? AND current = 1 AND status = 'valid'", (uid,))}
        issued = conn.execute("SELECT COUNT(*) FROM certificates WHERE user_id = ?", (uid,)).fetchone()[0]
        archived = conn.execute("SELECT COUNT(*) FROM archive WHERE user_id = ?", (uid,)).fetchone()[0]
    if issued != 2 or archived != 1:
        return f"{issued} certificates and {archived} archive records for {email} (a second enrollment)"
    if got["sign"] != current.get("sign") or current.get("encrypt") not in got["enc"]:
        return "the keystore does not hold the user's current certificates"
    for kind, suffix in (("encrypt", "enc"), ("sign", "sign")):
        path = case.home / "pub" / "certs" / f"{email}.{suffix}.crt"
        if not path.exists() or path.read_bytes().hex() != current[kind]:
            return f"directory file {path.name} missing or stale"
    return None


def prepare_enroll(case: Case) -> None:
    code = json.loads(must(km(case.home, "user", "add", "carol@example.com", "--json"), "user add").stdout)["code"]
    save_state(case, code=code)


def enroll_exists_but_whole(case: Case, proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 2 and "exists" in proc.stderr and verify_keystore(
        case, "carol@example.com", case.work / "carol.epf") is None


def prepare_revoke(case: Case) -> None:
    pass  # alice is enrolled in the template


def verify_revoke(case: Case, _p: subprocess.CompletedProcess[str]) -> str | None:
    with db(case) as conn:
        status = conn.execute("SELECT status FROM users WHERE email = 'alice@example.com'").fetchone()[0]
        valid = conn.execute("SELECT COUNT(*) FROM certificates c JOIN users u ON u.id = c.user_id "
                             "WHERE u.email = 'alice@example.com' AND c.status = 'valid'").fetchone()[0]
    if status != "revoked" or valid:
        return f"alice is {status} with {valid} valid certificates"
    if list((case.home / "pub" / "certs").glob("alice@example.com.*")):
        return "the revoked user's certificates are still in the directory"
    return None


def prepare_import(case: Case) -> None:
    case.work.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"staff{i:02d}@example.com,Staff {i}\n" for i in range(20))
    (case.work / "staff.csv").write_text("email,name\n" + rows)


def verify_import(case: Case, _p: subprocess.CompletedProcess[str]) -> str | None:
    out = case.work / "codes.csv"
    lines = out.read_text().splitlines() if out.exists() else []
    if len(lines) != 21 or lines[0] != "email,code":
        return f"codes file has {len(lines)} lines"
    code = dict(line.split(",", 1) for line in lines[1:])["staff07@example.com"]
    proc = py(
        "import sqlite3,sys,hmac\nfrom hsmkm.km.users import code_verifier\n"
        "c=sqlite3.connect(sys.argv[1]);v=c.execute(\"SELECT ec.verifier FROM users u JOIN enrollment_codes ec "
        "ON ec.user_id=u.id WHERE u.email='staff07@example.com'\").fetchone()\n"
        "sys.exit(0 if v and hmac.compare_digest(bytes(v[0]), code_verifier(sys.argv[2])) else 1)",
        str(case.home / "km.db"), code)
    if proc.returncode != 0:
        return "the codes in the file are not the users' codes"
    with db(case) as conn:
        n = conn.execute("SELECT COUNT(*) FROM users WHERE email LIKE 'staff%'").fetchone()[0]
    return None if n == 20 else f"{n} of 20 users imported"


def verify_crl(case: Case, _p: subprocess.CompletedProcess[str]) -> str | None:
    proc = py("import sys\nfrom pathlib import Path\nfrom hsmkm.x509.crl import parse_crl\n"
              "print(parse_crl(Path(sys.argv[1]).read_bytes()).number)", str(case.home / "pub" / "crl" / "full.crl"))
    if proc.returncode != 0:
        return "full.crl does not parse"
    with db(case) as conn:
        newest = conn.execute("SELECT MAX(number) FROM crls WHERE kind = 'full'").fetchone()[0]
    return None if int(proc.stdout) == newest else f"full.crl is #{proc.stdout.strip()}, the newest is #{newest}"


def prepare_recovery(case: Case) -> None:
    rid = json.loads(must(km(case.home, "recovery", "request", "alice@example.com", "--reason", "faults", "--json"),
                          "recovery request").stdout)["id"]
    for officer in ("officer1", "officer2"):
        must(km(case.home, "recovery", "approve", str(rid), "--officer", officer, "--yes"), "recovery approve")
    save_state(case, rid=str(rid))


def verify_export(case: Case, _p: subprocess.CompletedProcess[str]) -> str | None:
    out = case.work / "alice.p12"
    proc = run(["openssl", "pkcs12", "-in", str(out), "-passin", "env:P", "-noout"], {"P": P12_PW})
    return None if proc.returncode == 0 else "the exported PKCS#12 does not open"


def verify_reenable(case: Case, proc: subprocess.CompletedProcess[str]) -> str | None:
    try:
        code = (case.work / "alice.code").read_text().strip()
    except OSError:
        return "the re-run left no code file"
    enrolled = run(enroll_argv(case, "alice@example.com", "CODE", case.work / "alice-again.epf"),
                   {"CODE": code, "PW": PW})
    return None if enrolled.returncode == 0 else f"enrolling with the code failed: {enrolled.stderr.strip()}"


def verify_rotate(case: Case, _p: subprocess.CompletedProcess[str]) -> str | None:
    proc = py(
        "import sys\nfrom pathlib import Path\nfrom hsmkm.km.manager import KeyManager\n"
        "from hsmkm.km import archive\nfrom hsmkm.km.rotation import master_key_is_sound\n"
        "home=Path(sys.argv[1]);km=KeyManager.open(home,(home/'secrets'/'km.pin').read_text().strip())\n"
        "label=km.db.get_meta('archive_key_label')\n"
        "assert km.db.get_meta('archive_rotation') is None, 'rotation left unfinished'\n"
        "assert master_key_is_sound(km.session,label), 'current master key is not whole'\n"
        "rows=km.db.conn.execute('SELECT id FROM archive').fetchall()\n"
        "for r in archive.records_by_id(km.db.reader(),[x[0] for x in rows]):\n"
        "    assert r.master_label==label, 'a record under an old key'\n"
        "    archive.open_outer(r, km.archive_key)\n",
        str(case.home))
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1][:200]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("status", lambda c: None, lambda c: [HSMKM, "--home", str(c.home), "status"]),
    Scenario("audit verify", lambda c: None, lambda c: [HSMKM, "--home", str(c.home), "audit", "verify"]),
    Scenario("enroll", prepare_enroll,
             lambda c: enroll_argv(c, "carol@example.com", "CODE", c.work / "carol.epf"),
             lambda c: {"CODE": c.state()["code"], "PW": PW},
             lambda c, p: verify_keystore(c, "carol@example.com", c.work / "carol.epf"),
             enroll_exists_but_whole),
    Scenario("crl publish", lambda c: None, lambda c: [HSMKM, "--home", str(c.home), "crl", "publish"],
             verify=verify_crl),
    Scenario("revoke", prepare_revoke,
             lambda c: [HSMKM, "--home", str(c.home), "user", "revoke", "alice@example.com", "--reason", "keyCompromise"],
             verify=verify_revoke),
    Scenario("import", prepare_import,
             lambda c: [HSMKM, "--home", str(c.home), "user", "import", str(c.work / "staff.csv"),
                        "--codes-out", str(c.work / "codes.csv")],
             verify=verify_import),
    Scenario("recovery export", prepare_recovery,
             lambda c: [HSMKM, "--home", str(c.home), "recovery", "complete", c.state()["rid"],
                        "--out", str(c.work / "alice.p12"), "--password-source", "env:P"],
             lambda c: {"P": P12_PW}, verify_export),
    Scenario("recovery reenable", prepare_recovery,
             lambda c: [HSMKM, "--home", str(c.home), "--json", "recovery", "complete", c.state()["rid"], "--reenable",
                        "--code-out", str(c.work / "alice.code")],
             verify=verify_reenable),
    Scenario("archive rotate", lambda c: None, lambda c: [HSMKM, "--home", str(c.home), "archive", "rotate"],
             verify=verify_rotate),
)}


# --- the template home ---------------------------------------------------------------------------


def make_template(base: Path) -> Case:
    case = Case(base)
    case.work.mkdir(parents=True)
    must(km(case.home, "init", "--ca-subject", "CN=Faults CA", "--ca-key", "p256"), "init")
    for email in ("alice@example.com", "bob@example.com"):
        code = json.loads(must(km(case.home, "user", "add", email, "--json"), "user add").stdout)["code"]
        must(run(enroll_argv(case, email, "CODE", case.work / f"{email.split('@')[0]}.epf"),
                 {"CODE": code, "PW": PW}), "enroll")
    must(km(case.home, "crl", "publish"), "crl publish")
    return case


def copy_case(src: Case, dst: Path) -> Case:
    shutil.copytree(src.base, dst, symlinks=True)  # as cp -a: the home is relocatable
    return Case(dst)


# --- tracing and injecting ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    syscall: str
    nth: int
    path: str

    def describe(self, case: Case) -> str:
        return f"{self.syscall}#{self.nth} {self.path.replace(str(case.base), '')}"


def trace_points(scenario: Scenario, case: Case) -> list[Point]:
    """Every writing syscall of an untouched run that touches the home or the outputs."""
    log = case.base.parent / f"{case.base.name}.trace"
    argv = ["strace", "-f", "-qq", "-y", "-e", "trace=" + ",".join(SYSCALLS), "-o", str(log), *scenario.argv(case)]
    proc = run(argv, scenario.env(case))
    if proc.returncode != 0:
        raise SystemExit(f"faults: {scenario.name} fails untouched: {proc.stderr.strip()}")
    counts: dict[str, int] = {}
    points: list[Point] = []
    main_pid: str | None = None
    for line in log.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, name, rest = m.groups()
        main_pid = main_pid or pid
        if pid != main_pid or name not in SYSCALLS:
            continue
        counts[name] = counts.get(name, 0) + 1
        path = _path_of(name, rest)
        if path is None or not path.startswith(str(case.base)) or path.endswith((".py", ".pyc")):
            continue
        points.append(Point(name, counts[name], path))
    log.unlink()
    return points


def _path_of(name: str, rest: str) -> str | None:
    if name == "openat":
        m = _OPEN_PATH.match(rest)
        if not m or not any(f in m.group(2) for f in ("O_WRONLY", "O_RDWR", "O_CREAT")):
            return None
        return m.group(1)
    if name in ("rename", "unlink", "link"):
        m = re.match(r'^"([^"]*)"', rest)
        return m.group(1) if m else None
    m = _FD_PATH.match(rest)
    return m.group(1) if m else None


def _dangerous(point: Point) -> bool:
    """A write into a token file: SoftHSM2 truncated it just before (the kill that used to lose tokens)."""
    return point.syscall == "write" and "/softhsm/tokens/" in point.path and point.path.endswith(".object")


def choose(points: list[Point], budget: int) -> list[Point]:
    """At most ``budget`` points: token-file writes first, one of each syscall, then spread."""
    if len(points) <= budget:
        return points
    chosen: list[Point] = []

    def take(p: Point) -> None:
        if len(chosen) < budget and p not in chosen:
            chosen.append(p)

    dangerous = [p for p in points if _dangerous(p)]
    for p in dangerous[:: max(1, len(dangerous) // max(1, budget // 3))]:
        take(p)
    for name in SYSCALLS:
        of_kind = [p for p in points if p.syscall == name]
        if of_kind:
            take(of_kind[len(of_kind) // 2])
    rest = [p for p in points if p not in chosen]
    if rest and len(chosen) < budget:
        step = len(rest) / (budget - len(chosen))
        i = 0.0
        while len(chosen) < budget and int(i) < len(rest):
            take(rest[int(i)])
            i += step
    return sorted(chosen, key=points.index)


# --- the invariants ---------------------------------------------------------------------------------

_TOKEN_CHECK = """
import json, sys
from pathlib import Path
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.keys.softhsm import find_softhsm_module
home = Path(sys.argv[1])
mod = Pkcs11Module.load(find_softhsm_module(), str(home / "softhsm" / "softhsm2.conf"))
labels = mod.token_labels()
logins = {}
for name in ("hsmkm", "officer1", "officer2", "officer3"):
    pin_name = "km" if name == "hsmkm" else name
    try:
        mod.open_token((home / "secrets" / f"{pin_name}.pin").read_text().strip(), label=name)
        logins[name] = True
    except Exception as exc:
        logins[name] = type(exc).__name__
print(json.dumps({"labels": labels, "logins": logins, "repairs": [r.describe() for r in mod.take_repairs()]}))
"""


def check_tokens(case: Case) -> tuple[str | None, int]:
    proc = py(_TOKEN_CHECK, str(case.home))
    if proc.returncode != 0:
        return f"token check failed: {proc.stderr.strip()[-200:]}", 0
    got = json.loads(proc.stdout)
    missing = [t for t in TOKENS if t not in got["labels"]]
    failed = [n for n, ok in got["logins"].items() if ok is not True]
    if missing or failed:
        return f"tokens missing {missing}, logins failing {failed}", len(got["repairs"])
    return None, len(got["repairs"])


def check_secrets(case: Case) -> str | None:
    pins = [p.read_bytes().strip() for p in (case.home / "secrets").glob("*.pin")]
    for path in case.base.rglob("*"):
        if not path.is_file() or path.parent.name == "secrets" and path.suffix == ".pin":
            continue
        data = path.read_bytes()
        for marker in PLAIN_KEY_MARKERS:
            if marker in data:
                return f"an unencrypted private key in {path.relative_to(case.base)}"
        for pin in pins:
            if pin and pin in data:
                return f"a PIN in {path.relative_to(case.base)}"
    return None


def check_temps(case: Case) -> str | None:
    left = [p for p in case.base.rglob(".*") if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".pending"))]
    return None if not left else "left: " + ", ".join(str(p.relative_to(case.base)) for p in left)


@dataclass
class Outcome:
    scenario: str
    point: str
    killed: bool
    failures: dict[str, str] = field(default_factory=dict)
    repairs: int = 0


def restore(snapshot: Path, case: Case) -> None:
    """The prepared state back at the case's own path (so its config already names it)."""
    shutil.rmtree(case.base, ignore_errors=True)
    shutil.copytree(snapshot, case.base, symlinks=True)


def inject(scenario: Scenario, case: Case, snapshot: Path, point: Point, failed_dir: Path, index: int) -> Outcome:
    restore(snapshot, case)
    desc = point.describe(case)
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={point.syscall}",
            "-e", f"inject={point.syscall}:signal=SIGKILL:when={point.nth}", *scenario.argv(case)]
    killed = run(argv, scenario.env(case)).returncode in (-9, 137)
    out = Outcome(scenario.name, desc, killed)
    if not killed:
        return out
    problem, out.repairs = check_tokens(case)
    if problem:
        out.failures["tokens"] = problem
    again = run(scenario.argv(case), scenario.env(case))
    if again.returncode != 0 and not scenario.accept(case, again):
        out.failures["rerun"] = f"exit {again.returncode}: {again.stderr.strip()[-200:]}"
    else:
        why = scenario.verify(case, again)
        if why:
            out.failures["rerun"] = why
    audit = km(case.home, "audit", "verify")
    if audit.returncode != 0:
        out.failures["audit"] = audit.stderr.strip()[-200:]
    for name, check in (("secrets", check_secrets), ("temps", check_temps)):
        why = check(case)
        if why:
            out.failures[name] = why
    if out.failures:
        shutil.copytree(case.base, failed_dir / f"{scenario.name.replace(' ', '-')}-{index}", symlinks=True)
    return out


# --- the campaign ----------------------------------------------------------------------------------


SMOKE = {"status": 2, "enroll": 2, "archive rotate": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description="kill -9 fault campaign over hsmkm's state-changing commands")
    ap.add_argument("--smoke", action="store_true", help="a few injections (the test suite's bounded run)")
    ap.add_argument("--per-command", type=int, default=45, help="injections per command (default 45)")
    ap.add_argument("--only", help="comma-separated command names")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep", type=Path, help="keep the scratch directory here (failed cases stay)")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        print("faults: strace is not installed (scripts/setup installs it)", file=sys.stderr)
        return 3
    names = list(SMOKE) if args.smoke else (args.only.split(",") if args.only else list(SCENARIOS))
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="hsmkm-faults-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    template = make_template(scratch / "template")
    outcomes: list[Outcome] = []
    for name in names:
        scenario = SCENARIOS[name]
        slug = name.replace(" ", "-")
        case = copy_case(template, scratch / f"run-{slug}")
        scenario.prepare(case)
        must(km(case.home, "status"), "status")  # settles the copy at its path before the snapshot
        snapshot = scratch / f"snapshot-{slug}"
        shutil.copytree(case.base, snapshot, symlinks=True)
        points = choose(trace_points(scenario, case), SMOKE[name] if args.smoke else args.per_command)
        for i, point in enumerate(points):
            outcome = inject(scenario, case, snapshot, point, scratch / "failed", i)
            outcomes.append(outcome)
            if not args.json:
                mark = "ok" if not outcome.failures else "FAIL " + "; ".join(f"{k}: {v}" for k, v in outcome.failures.items())
                print(f"{name:<18} {outcome.point:<70} {'killed' if outcome.killed else 'not reached':<11} {mark}",
                      file=sys.stderr, flush=True)
        shutil.rmtree(case.base, ignore_errors=True)
        shutil.rmtree(snapshot, ignore_errors=True)
    table = summarise(names, outcomes)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"table": table, "seconds": round(elapsed, 1), "scratch": str(scratch),
                          "failures": [o.__dict__ for o in outcomes if o.failures]}))
    else:
        print_table(table, elapsed)
    if not args.keep and not any(o.failures for o in outcomes):
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if any(o.failures for o in outcomes) else 0


def summarise(names: list[str], outcomes: list[Outcome]) -> list[dict[str, object]]:
    rows = []
    for name in [*names, "total"]:
        mine = [o for o in outcomes if name == "total" or o.scenario == name]
        killed = [o for o in mine if o.killed]
        row: dict[str, object] = {"command": name, "injections": len(killed), "not_reached": len(mine) - len(killed),
                                  "restored": sum(o.repairs for o in killed)}
        for inv in INVARIANTS:
            row[inv] = sum(1 for o in killed if inv in o.failures)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, object]], elapsed: float) -> None:
    head = ["command", "injections", "tokens lost", "rerun failed", "audit failed", "plaintext", "temp left",
            "files restored", "not reached"]
    keys = ["command", "injections", "tokens", "rerun", "audit", "secrets", "temps", "restored", "not_reached"]
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in zip(head, keys)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))
    print(f"({elapsed:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
