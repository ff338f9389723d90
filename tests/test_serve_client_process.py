"""The hsmkm client as a user runs it: another process, another user, nothing of the KM.

The client runs as ``nobody`` (``setpriv``), ``HSMKM_HOME`` unset, in a directory of its own;
the KM home is mode 0700 and owned by the operator, and the test first shows the client
cannot read it. From a profile holding only the CA certificate, alice enrolls into an .epf
and bob into a slot of a SoftHSM2 token store he owns, alice looks bob up and encrypts to
him, both fetch the CRLs. Then, with the server stopped, alice signs, bob verifies and
decrypts, and alice encrypts to bob again from her cache.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import HSMKM, hsmkm
from server_harness import RunningServer, running_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run the client as another user"
)

CLIENT_USER = "nobody"
CLIENT_GROUP = "nogroup"
NOTE = (
    b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: quarterly numbers\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nThe numbers are in the usual place.\r\n"
)


@dataclass
class Client:
    """One unprivileged user's machine: a directory it owns, and the commands it runs there."""

    root: Path
    uid: int
    gid: int
    module: str

    def path(self, name: str) -> Path:
        return self.root / name

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {  # no HSMKM_* at all
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),  # ~/.config and ~/.cache are the client's own
            "SOFTHSM2_CONF": str(self.path("softhsm2.conf")),
            "LANG": "C.UTF-8",
        }
        env.update(extra or {})
        return env

    def run(
        self, argv: list[str], env: dict[str, str], input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        full = ["setpriv", f"--reuid={CLIENT_USER}", f"--regid={CLIENT_GROUP}", "--clear-groups", *argv]
        proc = subprocess.run(full, cwd=self.root, env=env, input=input, capture_output=True, timeout=300, check=False)
        if check:
            assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        return proc

    def hsmkm(
        self, *args: str, profile: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """A user command with its profile (``--profile DIR``, the user's own directory)."""
        return self.run([HSMKM, *args, "--profile", str(self.path(profile))], self.env(env), check=check)


@pytest.fixture
def client(module_path: str) -> Iterator[Client]:
    root = Path(tempfile.mkdtemp(prefix="hsmkm-client-", dir="/tmp"))
    entry = pwd.getpwnam(CLIENT_USER)
    os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    yield Client(root, entry.pw_uid, entry.pw_gid, module_path)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    home = tmp_path / "km" / "home"
    hsmkm("init", "--ca-subject", "CN=Client process CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    codes = {
        e: hsmkm("--json", "user", "add", e, home=home).json()["code"] for e in ("alice@example.com", "bob@example.com")
    }
    hsmkm("crl", "publish", home=home)
    home.chmod(0o700)
    with running_server(home) as server:
        yield server, codes


@pytest.mark.slow
def test_the_client_enrolls_looks_up_fetches_crls_and_then_works_with_the_server_stopped(
    client: Client, served: tuple[RunningServer, dict[str, str]]
) -> None:
    server, codes = served
    home = server.home

    # the client cannot read anything of the KM
    assert home.stat().st_mode & 0o777 == 0o700 and home.stat().st_uid == 0
    for probe in (["cat", str(home / "km.json")], ["ls", str(home)], ["cat", str(home / "secrets" / "km.pin")]):
        denied = client.run(probe, client.env(), check=False)
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr, probe
    readable = client.run(
        [str(Path(HSMKM).parent / "python"), "-c", f"open({str(home / 'km.db')!r}, 'rb')"],
        client.env(),
        check=False,
    )
    assert b"PermissionError" in readable.stderr

    ca = client.path("ca.pem")
    ca.write_bytes(server.ca_pem.read_bytes())
    os.chown(ca, client.uid, client.gid)
    client.path("note.eml").write_bytes(NOTE)
    os.chown(client.path("note.eml"), client.uid, client.gid)

    # bob's token store, made by bob (the client user) with SoftHSM2's own tool
    conf = client.path("softhsm2.conf")
    client.run(["mkdir", "-m", "0700", str(client.path("tokens"))], client.env())
    client.run(
        [
            "sh",
            "-c",
            f"printf 'directories.tokendir = {client.path('tokens')}\\nobjectstore.backend = file\\n' > {conf}",
        ],
        client.env(),
    )
    bob_pin = "bob-token-pin-4711"
    client.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bob", "--pin", bob_pin, "--so-pin", "so-" + bob_pin],
        client.env(),
    )
    bob_token = f"pkcs11:token=bob?module-path={client.module}&pin-source=env:BOB_PIN"

    secrets = {"PW": "alice-epf-password", "BOB_PIN": bob_pin}
    client.hsmkm(
        "enroll",
        "--km",
        server.url,
        "--ca-cert",
        str(ca),
        "--email",
        "alice@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(client.path("alice.epf")),
        "--password-source",
        "env:PW",
        profile="alice-profile",
        env={"CODE": codes["alice@example.com"], **secrets},
    )
    client.hsmkm(
        "enroll",
        "--km",
        server.url,
        "--ca-cert",
        str(ca),
        "--email",
        "bob@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        bob_token,
        profile="bob-profile",
        env={"CODE": codes["bob@example.com"], **secrets},
    )
    assert client.path("alice.epf").stat().st_uid == client.uid
    for profile in ("alice-profile", "bob-profile"):
        assert (client.path(profile) / "ca.crt").read_bytes().strip() == server.ca_pem.read_bytes().strip()
        client.hsmkm("crl", "fetch", "--km", server.url, profile=profile)
        assert list((client.path(profile) / "crl").iterdir()), f"{profile}: no CRL cached"

    # alice looks bob up in the directory (validated, cached) and encrypts to him
    client.hsmkm(
        "msg",
        "encrypt",
        "--km",
        server.url,
        "--to",
        "bob@example.com",
        "note.eml",
        "-o",
        "online.eml",
        profile="alice-profile",
    )
    assert list((client.path("alice-profile") / "recipients").iterdir()), "bob's certificate not cached"

    server.stop()

    # offline: alice signs, bob verifies; alice encrypts to bob from her cache, bob decrypts
    client.hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(client.path("alice.epf")),
        "--password-source",
        "env:PW",
        "note.eml",
        "-o",
        "signed.eml",
        profile="alice-profile",
        env=secrets,
    )
    client.hsmkm("msg", "verify", "signed.eml", profile="bob-profile")
    client.hsmkm("msg", "encrypt", "--to", "bob@example.com", "note.eml", "-o", "offline.eml", profile="alice-profile")
    for message in ("online.eml", "offline.eml"):
        out = f"{message}.out"
        client.hsmkm("msg", "decrypt", "--keystore", bob_token, message, "-o", out, profile="bob-profile", env=secrets)
        assert b"The numbers are in the usual place." in client.path(out).read_bytes()
    # what the server's absence cannot give: a recipient never looked up
    unknown = client.hsmkm(
        "msg",
        "encrypt",
        "--to",
        "carol@example.com",
        "note.eml",
        "-o",
        "carol.eml",
        profile="alice-profile",
        check=False,
    )
    assert unknown.returncode != 0
    assert b"Traceback" not in unknown.stderr
