"""Inside ``hsmkm serve`` one drainer (in the supervisor) publishes to LDAP: what a worker
enrolled over EST (the workers hold no bind password and leave the directory's rows to it), and
what was queued while the directory was down, once it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import hsmkm
from hsmkm.bench.slapd import Slapd
from ldap_helpers import PW, configure, values
from server_harness import init_km, running_server

pytestmark = [pytest.mark.slow, pytest.mark.interop]

DEADLINE_S = 60.0  # a bound on waiting, not a measured figure


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.2)


def test_the_servers_drainer_publishes_est_enrollments_and_what_waited_while_ldap_was_down(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    home = tmp_path / "km"
    codes = init_km(home)
    configure(home, slapd, ldap_base)

    def certs() -> list[bytes]:
        return values(
            slapd.search(ldap_base, "(mail=alice@example.com)", "userCertificate;binary"), "userCertificate;binary"
        )

    with running_server(home) as server:
        hsmkm(
            "enroll", "--km", server.url, "--profile", str(tmp_path / "profile"), "--ca-cert", str(server.ca_pem),
            "--email", "alice@example.com", "--code-source", "env:CODE", "--keystore", str(tmp_path / "alice.epf"),
            "--password-source", "env:PW", env={"CODE": codes["alice@example.com"], "PW": PW},
        )  # fmt: skip
        _eventually(lambda: len(certs()) == 2, "alice's EST enrollment in LDAP")
        status = hsmkm("status", "--json", home=home).json()["outbox"]
        assert status["last_error"] is None  # the worker deferring to the drainer is no failure

        slapd.stop()
        try:
            hsmkm("user", "revoke", "alice@example.com", home=home)
            assert hsmkm("status", "--json", home=home).json()["outbox"]["depth"] >= 1
        finally:
            slapd.start()
        _eventually(lambda: certs() == [], "the revocation in LDAP after the directory came back")
        _eventually(lambda: hsmkm("status", "--json", home=home).json()["outbox"]["depth"] == 0, "an empty outbox")
