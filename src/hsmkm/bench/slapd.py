"""A throwaway OpenLDAP slapd for the tests and the bench: its config, database and pid file
in one temporary folder, listening on a free loopback port, run as the current user."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

SCHEMAS = ("core", "cosine", "inetorgperson")
SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slapd() -> str:
    found = shutil.which("slapd") or "/usr/sbin/slapd"
    if not Path(found).exists():
        raise RuntimeError("slapd is not installed (scripts/setup installs it)")
    return found


class Slapd:
    """``start()``/``stop()`` keep the data; ``url``, ``root_dn``, ``password`` to bind."""

    def __init__(self, folder: Path, audit: bool = True) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.suffix = SUFFIX
        self.root_dn = ROOT_DN
        self.password = secrets.token_urlsafe(16)
        self.password_file = folder / "root.pw"
        self.proc: subprocess.Popen[bytes] | None = None
        (folder / "db").mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password)
        self.password_file.chmod(0o600)
        salt = os.urandom(8)
        ssha = base64.b64encode(hashlib.sha1(self.password.encode() + salt).digest() + salt).decode()
        schema = Path("/etc/ldap/schema")
        includes = "".join(f"include {schema / name}.schema\n" for name in SCHEMAS)
        modules = "/usr/lib/ldap"
        self.audit_log = folder / "audit.ldif"
        # Every change as LDIF, in the order slapd applied it (the tests read the history).
        audit_conf = f"overlay auditlog\nauditlog {self.audit_log}\n" if audit else ""
        self.tls_ca = folder / "tls-ca.pem"
        tls_conf = self._tls_files()
        (folder / "slapd.conf").write_text(
            f"""{includes}{tls_conf}pidfile {folder / "slapd.pid"}
modulepath {modules}
moduleload back_mdb
moduleload auditlog
sizelimit unlimited
database mdb
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {{SSHA}}{ssha}
directory {folder / "db"}
maxsize 4294967296
dbnosync
index mail eq
index objectClass eq
{audit_conf}"""
        )

    def _tls_files(self) -> str:
        """A CA of its own and a certificate for 127.0.0.1 (StartTLS)."""
        from datetime import UTC, datetime, timedelta
        from ipaddress import IPv4Address

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test directory CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.tls_ca.write_bytes(ca.public_bytes(pem))
        (self.folder / "tls.crt").write_bytes(cert.public_bytes(pem))
        key_path = self.folder / "tls.key"
        key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_path.chmod(0o600)
        return (
            f"TLSCACertificateFile {self.tls_ca}\nTLSCertificateFile {self.folder / 'tls.crt'}\n"
            f"TLSCertificateKeyFile {key_path}\n"
        )

    def start(self) -> None:
        if self.proc is not None:
            return
        self.proc = subprocess.Popen(
            [_slapd(), "-d", "0", "-h", f"{self.url}/", "-f", str(self.folder / "slapd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "slapd.log", "ab"),  # noqa: SIM115 - the child keeps it open
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.folder / 'slapd.log').read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    self._suffix_entry()
                    return
            time.sleep(0.05)
        raise RuntimeError("slapd did not start listening")

    def _suffix_entry(self) -> None:
        marker = self.folder / "suffix.made"
        if not marker.exists():
            self.ldif(f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n")
            marker.touch()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def ldif(self, text: str) -> None:
        """``ldapadd`` these entries as the root DN."""
        subprocess.run(
            ["ldapadd", "-x", "-H", self.url, "-D", self.root_dn, "-y", str(self.password_file)],
            input=text.encode(),
            check=True,
            capture_output=True,
        )

    def make_base(self, rdn_value: str) -> str:
        """A fresh ``ou=`` subtree under the suffix (one per test)."""
        base = f"ou={rdn_value},{SUFFIX}"
        self.ldif(f"dn: {base}\nobjectClass: organizationalUnit\nou: {rdn_value}\n")
        return base

    def search(self, base: str, filt: str, *attrs: str) -> str:
        """``ldapsearch -x`` (anonymous, as mail clients do), LDIF text."""
        out = subprocess.run(
            ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url, "-b", base, filt, *attrs],
            capture_output=True,
            check=True,
        )
        return out.stdout.decode()
