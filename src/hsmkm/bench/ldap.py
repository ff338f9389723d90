"""ldap: users published into a real slapd by the KM's LDAP publisher (one connection, adds
pipelined), beside ``ldapadd`` of the same entries as LDIF in the same run; lookups per second
as a mail client makes them (``(mail=ADDR)`` for ``userCertificate;binary``), beside
``ldapsearch`` processes making the same lookups."""

from __future__ import annotations

import base64
import random
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsmkm.bench.rows import Row
from hsmkm.bench.slapd import Slapd
from hsmkm.certnames import CertKind
from hsmkm.client.ldap_directory import USER_CERT_ATTRS, LdapClient, LdapLocation
from hsmkm.km.config import LdapConfig
from hsmkm.km.publishers.ldap import LdapPublisher, user_attributes

GROUP = "ldap"


def _certificates() -> dict[CertKind, bytes]:
    """A signing and an encryption certificate of the size the KM issues (P-256)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    now = datetime.now(UTC)
    out = {}
    for kind, usage in ((CertKind.SIGN, (True, False)), (CertKind.ENCRYPT, (False, True))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench user")]))
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("user@bench.example")]), critical=False)
            .add_extension(
                x509.KeyUsage(usage[0], False, False, False, usage[1], False, False, False, False), critical=True
            )
            .sign(ca_key, hashes.SHA256())
        )
        out[kind] = cert.public_bytes(serialization.Encoding.DER)
    return out


def _ldif(base: str, emails: list[str], certs: dict[CertKind, bytes]) -> str:
    parts = []
    for email in emails:
        lines = [f"dn: mail={email},{base}"]
        for attr, vals in user_attributes(email, certs).items():
            lines += [f"{attr}:: {base64.b64encode(v).decode()}" for v in vals]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def run(tmp: Path, quick: bool) -> list[Row]:
    n = 1_000 if quick else 10_000
    lookups = 500 if quick else 2_000
    spawned = 20 if quick else 50
    server = Slapd(tmp / "slapd", audit=False)
    server.start()
    try:
        certs = _certificates()
        emails = [f"u{i}@bench.example" for i in range(n)]
        ours, theirs = server.make_base("hsmkm"), server.make_base("ldapadd")
        ldif = tmp / "users.ldif"
        ldif.write_text(_ldif(theirs, emails, certs))

        pw = server.password
        publisher = LdapPublisher(LdapConfig(server.url, ours, server.root_dn, None), lambda: pw)
        entries = [(e, certs) for e in emails]
        t = time.perf_counter()
        publisher.user_entries(entries)
        publish_rate = n / (time.perf_counter() - t)
        publisher.close()

        t = time.perf_counter()
        subprocess.run(
            ["ldapadd", "-x", "-H", server.url, "-D", server.root_dn, "-y", str(server.password_file), "-f", str(ldif)],
            check=True,
            capture_output=True,
        )
        ldapadd_rate = n / (time.perf_counter() - t)

        client = LdapClient(LdapLocation(server.url, ours))
        picks = [random.choice(emails) for _ in range(lookups)]
        t = time.perf_counter()
        for email in picks:
            (entry,) = client.search(f"(mail={email})", USER_CERT_ATTRS)
            assert len(entry["userCertificate;binary"]) == 2
        lookup_rate = lookups / (time.perf_counter() - t)
        t = time.perf_counter()
        for email in picks[:spawned]:
            subprocess.run(
                [
                    "ldapsearch",
                    "-x",
                    "-LLL",
                    "-H",
                    server.url,
                    "-b",
                    theirs,
                    f"(mail={email})",
                    "userCertificate;binary",
                ],
                check=True,
                capture_output=True,
            )
        ldapsearch_rate = spawned / (time.perf_counter() - t)
    finally:
        server.stop()
    return [
        Row(GROUP, "publish", publish_rate, "users/s", f"ldapadd {ldapadd_rate:.0f} users/s ({n} entries)"),
        Row(
            GROUP,
            "publish_ratio",
            publish_rate / ldapadd_rate,
            "ratio",
            "hsmkm ÷ ldapadd, same entries",
            publish_rate / ldapadd_rate,
        ),
        Row(
            GROUP,
            "lookups",
            lookup_rate,
            "lookups/s",
            f"ldapsearch process per lookup {ldapsearch_rate:.1f}/s",
            lookup_rate / ldapsearch_rate,
        ),
    ]
