"""The LDAP publisher: users as ``inetOrgPerson`` + ``pkiUser`` entries holding their current
certificates (``userCertificate;binary``, ``userSMIMECertificate``), and the CA's entry with its
certificate and CRLs, as mail clients read them.

Every method writes what it is given as the whole truth for that entry (the callers read it
from the database's current state), so publishing again is harmless and an older state is
never written after a newer one by the same drain. A CRL is installed only over one with a
smaller number; the read and the write happen under the home's lock (the fan-out holds it), as
the CRL attributes have no equality rule for a compare-and-swap modify.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

import ldap
from cryptography import x509
from ldap.dn import escape_dn_chars
from ldap.filter import escape_filter_chars

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.est import certsonly
from hsmkm.km.config import LdapConfig
from hsmkm.km.publisher import CrlKind
from hsmkm.km.publishers.ldap_conn import DOWN, LdapConnection, describe
from hsmkm.x509.crlparse import parse_crl

CA_RDN = "cn=hsmkm-ca"
USER_CLASSES = [b"inetOrgPerson", b"pkiUser"]
CA_CLASSES = [b"organizationalRole", b"pkiCA", b"deltaCRL"]
USER_CERT = "userCertificate;binary"
SMIME_CERT = "userSMIMECertificate"
CA_CERT = "cACertificate;binary"
CRL_ATTR = {CrlKind.FULL: "certificateRevocationList;binary", CrlKind.DELTA: "deltaRevocationList;binary"}
PIPELINE = 64  # adds in flight on one connection during a batch
_ORDER = (CertKind.SIGN, CertKind.ENCRYPT)


def user_attributes(email: str, certs: Mapping[CertKind, bytes]) -> dict[str, list[bytes]]:
    """The entry's attributes for these current certificates (also the bench's LDIF)."""
    ders = [certs[k] for k in _ORDER if k in certs]
    bundle = certsonly.encode([x509.load_der_x509_certificate(d) for d in ders])
    local = email.split("@", 1)[0].encode()
    return {
        "objectClass": USER_CLASSES,
        "cn": [email.encode()],
        "sn": [local or email.encode()],
        "mail": [email.encode()],
        USER_CERT: ders,
        SMIME_CERT: [bundle],
    }


class LdapPublisher:
    """One directory subtree (``base_dn``): ``mail=ADDR,BASE`` per user, ``cn=hsmkm-ca,BASE``."""

    def __init__(self, settings: LdapConfig, password: Callable[[], str] | None) -> None:
        self.settings = settings
        self.base = settings.base_dn
        self.ca_dn = f"{CA_RDN},{self.base}"
        self.link = LdapConnection(settings, password)

    def user_dn(self, email: str) -> str:
        return f"mail={escape_dn_chars(email)},{self.base}"

    @contextlib.contextmanager
    def _op(self) -> Iterator[ldap.ldapobject.LDAPObject]:
        try:
            conn = self.link.get()
        except errors.Unreachable:
            raise
        except errors.BadInput as exc:
            # A refused bind is the configuration's fault, not the entry's: the rows stay queued.
            raise errors.Unreachable(str(exc)) from None
        try:
            yield conn
        except DOWN as exc:
            raise self.link.down(exc) from None
        except ldap.INVALID_DN_SYNTAX:
            raise errors.BadInput("no LDAP entry can be named after this address") from None
        except ldap.LDAPError as exc:
            raise errors.Unreachable(f"LDAP directory {self.link.uri} refused a change ({describe(exc)})") from None

    def prepare(self) -> None:
        with self._op() as conn:
            self._ensure_base(conn)

    def _ensure_base(self, conn: ldap.ldapobject.LDAPObject) -> None:
        try:
            conn.search_s(self.base, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
            return
        except ldap.NO_SUCH_OBJECT:
            pass
        attr, _, value = self.base.split(",", 1)[0].partition("=")
        if attr.lower() == "ou":
            entry = {"objectClass": [b"organizationalUnit"], "ou": [value.encode()]}
        elif attr.lower() == "dc":
            entry = {"objectClass": [b"dcObject", b"organization"], "dc": [value.encode()], "o": [value.encode()]}
        else:
            raise errors.NotFound(f"the LDAP base {self.base} does not exist (make it, or name an ou= or dc= entry)")
        with contextlib.suppress(ldap.ALREADY_EXISTS):
            conn.add_s(self.base, list(entry.items()))

    def _ensure_ca_entry(self, conn: ldap.ldapobject.LDAPObject) -> None:
        try:
            conn.add_s(self.ca_dn, [("objectClass", CA_CLASSES), ("cn", [CA_RDN[3:].encode()])])
        except ldap.ALREADY_EXISTS:
            pass
        except ldap.NO_SUCH_OBJECT:
            self._ensure_base(conn)
            with contextlib.suppress(ldap.ALREADY_EXISTS):
                conn.add_s(self.ca_dn, [("objectClass", CA_CLASSES), ("cn", [CA_RDN[3:].encode()])])

    def ca_certificate(self, der: bytes) -> None:
        with self._op() as conn:
            self._ensure_ca_entry(conn)
            conn.modify_s(self.ca_dn, [(ldap.MOD_REPLACE, CA_CERT, [der])])

    def crl_location(self, kind: CrlKind) -> str:
        return f"{self.link.uri}/{self.ca_dn}?{CRL_ATTR[kind]}"

    def crl(self, kind: CrlKind, number: int, der: bytes) -> bool:
        attr = CRL_ATTR[kind]
        with self._op() as conn:
            self._ensure_ca_entry(conn)
            found = conn.search_s(self.ca_dn, ldap.SCOPE_BASE, "(objectClass=*)", [attr])
            values = found[0][1].get(attr, []) if found else []
            old = values[0] if values else None
            if old is not None:
                try:
                    current = parse_crl(old).number or 0
                except errors.MalformedInput:
                    current = 0
                if current >= number:
                    return False
            conn.modify_s(self.ca_dn, [(ldap.MOD_REPLACE, attr, [der])])
            return True

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the fan-out holds the home's lock around every publisher

    def user(self, email: str, certs: Mapping[CertKind, bytes]) -> None:
        dn = self.user_dn(email)
        with self._op() as conn:
            if not certs:
                with contextlib.suppress(ldap.NO_SUCH_OBJECT):
                    conn.delete_s(dn)
                return
            attrs = user_attributes(email, certs)
            try:
                conn.modify_s(dn, [(ldap.MOD_REPLACE, a, attrs[a]) for a in (USER_CERT, SMIME_CERT)])
            except ldap.NO_SUCH_OBJECT:
                self._add(conn, dn, attrs)
            except ldap.LDAPError as exc:
                if isinstance(exc, DOWN):
                    raise
                # Not one of ours (planted without pkiUser, say): made again from the database.
                with contextlib.suppress(ldap.NO_SUCH_OBJECT):
                    conn.delete_s(dn)
                self._add(conn, dn, attrs)

    def _add(self, conn: ldap.ldapobject.LDAPObject, dn: str, attrs: dict[str, list[bytes]]) -> None:
        try:
            conn.add_s(dn, list(attrs.items()))
        except ldap.NO_SUCH_OBJECT:
            self._ensure_base(conn)
            conn.add_s(dn, list(attrs.items()))

    def user_entries(self, entries: Iterable[tuple[str, Mapping[CertKind, bytes]]]) -> int:
        """Publish many entries on one connection, ``PIPELINE`` adds in flight; an entry that
        exists is replaced. Returns how many."""
        n = 0
        with self._op() as conn:
            self._ensure_base(conn)
            pending: dict[int, tuple[str, Mapping[CertKind, bytes]]] = {}
            for email, certs in entries:
                n += 1
                if not certs:
                    self.user(email, certs)
                    continue
                msgid = conn.add_ext(self.user_dn(email), list(user_attributes(email, certs).items()))
                pending[msgid] = (email, certs)
                if len(pending) >= PIPELINE:
                    self._collect(conn, pending)
            while pending:
                self._collect(conn, pending)
        return n

    def _collect(
        self, conn: ldap.ldapobject.LDAPObject, pending: dict[int, tuple[str, Mapping[CertKind, bytes]]]
    ) -> None:
        msgid = next(iter(pending))
        email, certs = pending.pop(msgid)
        try:
            conn.result(msgid)
        except ldap.ALREADY_EXISTS:
            self.user(email, certs)
        except ldap.INVALID_DN_SYNTAX:
            pass  # an address no entry may be named after, as user() refuses it

    def prune(self, keep: Collection[str]) -> None:
        wanted = {e.lower() for e in keep}
        with self._op() as conn:
            try:
                found = conn.search_s(self.base, ldap.SCOPE_ONELEVEL, "(objectClass=pkiUser)", ["mail"])
            except ldap.NO_SUCH_OBJECT:
                return
            for dn, attrs in found:
                mails = [m.decode(errors="replace").lower() for m in attrs.get("mail", [])]
                if dn is not None and not any(m in wanted for m in mails):
                    conn.delete_s(dn)

    def entry_certificates(self, email: str) -> list[bytes]:
        """The ``userCertificate;binary`` values the directory holds for the address now."""
        with self._op() as conn:
            found = conn.search_s(self.base, ldap.SCOPE_SUBTREE, f"(mail={escape_filter_chars(email)})", [USER_CERT])
        return [v for dn, attrs in found if dn is not None for v in attrs.get(USER_CERT, [])]

    def close(self) -> None:
        self.link.close()
