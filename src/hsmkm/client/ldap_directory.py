"""Recipients looked up in an LDAP directory as mail clients do (``(mail=ADDR)``, then
``userCertificate;binary``), and the CA's CRLs from its entry there. The directory is not
trusted: every certificate found is validated (chain to the profile's CA, for encryption,
the address, valid now, not revoked) and only a valid one is used."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import ldap
from cryptography import x509
from ldap.filter import escape_filter_chars

from hsmkm import errors
from hsmkm.addresses import normalize_email
from hsmkm.client.certcheck import check_recipient
from hsmkm.client.sources import CrlSet
from hsmkm.clock import Clock, system_clock
from hsmkm.cms.validation import RevocationCheck

USER_CERT_ATTRS = ["userCertificate;binary", "userCertificate"]
FULL_CRL_ATTRS = ["certificateRevocationList;binary", "certificateRevocationList"]
DELTA_CRL_ATTRS = ["deltaRevocationList;binary", "deltaRevocationList"]
TIMEOUT_S = 10.0
MAX_ENTRIES = 8  # Thunderbird reads at most two per address; a flood is not read


@dataclass(frozen=True)
class LdapLocation:
    """``ldap://HOST[:PORT]/BASE`` (or ``ldaps://``), as RFC 4516 writes it."""

    server: str
    base: str

    @classmethod
    def parse(cls, url: str) -> LdapLocation:
        parts = urlsplit(url)
        base = unquote(parts.path.lstrip("/"))
        if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname or not base:
            raise errors.BadInput(f"--directory {url!r}: expected ldap://HOST[:PORT]/BASE-DN or ldaps://…")
        return cls(f"{parts.scheme.lower()}://{parts.netloc}", base)


class LdapClient:
    """Anonymous searches on one connection, made when first needed."""

    def __init__(self, location: LdapLocation) -> None:
        self.location = location
        self._conn: ldap.ldapobject.LDAPObject | None = None

    def search(self, filterstr: str, attrs: list[str]) -> list[dict[str, list[bytes]]]:
        try:
            if self._conn is None:
                conn = ldap.initialize(self.location.server)
                conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
                conn.set_option(ldap.OPT_REFERRALS, 0)
                conn.set_option(ldap.OPT_NETWORK_TIMEOUT, TIMEOUT_S)
                conn.simple_bind_s("", "")
                self._conn = conn
            found = self._conn.search_ext_s(
                self.location.base, ldap.SCOPE_SUBTREE, filterstr, attrs, sizelimit=MAX_ENTRIES, timeout=int(TIMEOUT_S)
            )
        except ldap.NO_SUCH_OBJECT:
            return []
        except ldap.LDAPError as exc:
            self._conn = None
            info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            raise errors.Unreachable(
                f"the LDAP directory {self.location.server} did not answer ({info.get('desc', type(exc).__name__)})"
            ) from None
        return [entry for dn, entry in found if dn is not None]


def _values(entries: list[dict[str, list[bytes]]], attrs: list[str]) -> list[bytes]:
    return [v for entry in entries for a in attrs for v in entry.get(a, [])]


class LdapDirectory:
    """A ``CertDirectory`` over LDAP: the newest certificate found that passes every check."""

    def __init__(
        self,
        client: LdapClient,
        ca: x509.Certificate,
        revocation: RevocationCheck | None,
        clock: Clock = system_clock,
    ) -> None:
        self.client = client
        self.ca = ca
        self.revocation = revocation
        self.clock = clock

    def encryption_certificate(self, email: str) -> x509.Certificate:
        email = normalize_email(email)
        entries = self.client.search(f"(mail={escape_filter_chars(email)})", USER_CERT_ATTRS)
        found = _values(entries, USER_CERT_ATTRS)
        if not found:
            raise errors.NotFound(f"no certificate for {email} in the LDAP directory {self.client.location.server}")
        refusals: list[errors.HsmkmError] = []
        valid: list[x509.Certificate] = []
        for der in found:
            try:
                cert = x509.load_der_x509_certificate(der)
                _ = cert.extensions  # parsed lazily: a bad extension must fail here
            except errors.CERTIFICATE_PARSE_ERRORS:
                refusals.append(errors.MalformedInput(f"the directory's certificate for {email}: not a certificate"))
                continue
            try:
                check_recipient(cert, self.ca, email, self.clock(), self.revocation)
            except (errors.ValidationFailed, errors.CertificateRevoked) as exc:
                refusals.append(exc)
                continue
            valid.append(cert)
        if valid:
            return max(valid, key=lambda c: c.not_valid_before_utc)
        # Nothing usable: the reason the most telling certificate was refused (revoked first,
        # as that names what happened; else the first refusal).
        revoked = [r for r in refusals if isinstance(r, errors.CertificateRevoked)]
        raise (revoked or refusals)[0]


class LdapCrlSource:
    """The CA's CRLs from its entry in the directory (``objectClass=pkiCA``); the CRL cache
    verifies them against the CA before installing them."""

    def __init__(self, client: LdapClient) -> None:
        self.client = client

    def fetch_crls(self) -> CrlSet:
        entries = self.client.search("(objectClass=pkiCA)", FULL_CRL_ATTRS + DELTA_CRL_ATTRS)
        full = _values(entries, FULL_CRL_ATTRS)
        if not full:
            raise errors.Unreachable(f"no CRL in the LDAP directory {self.client.location.server}")
        delta = _values(entries, DELTA_CRL_ATTRS)
        return CrlSet(full[0], delta[0] if delta else None)
