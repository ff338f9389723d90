"""A connection to the LDAP directory the KM publishes into: StartTLS or ldaps against the
operator's CA, a simple bind with the password read from its source when it is needed, and a
backoff while the directory is down (a long-lived drainer does not hammer it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import ldap
from ldap.ldapobject import LDAPObject

from hsmkm import errors
from hsmkm.km.config import LdapConfig

NETWORK_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

# Errors that mean "the directory is not there now": the outbox keeps the rows.
DOWN = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.UNAVAILABLE, ldap.BUSY)


def describe(exc: ldap.LDAPError) -> str:
    """One line from python-ldap's error dict (never the bind password: it is not in it)."""
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    parts = [str(info.get("desc", type(exc).__name__))]
    if info.get("info"):
        parts.append(str(info["info"]))
    return ": ".join(parts)


class LdapConnection:
    """One bound connection, made again after the directory went away."""

    def __init__(
        self,
        settings: LdapConfig,
        password: Callable[[], str] | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        url = urlsplit(settings.url)
        if url.scheme not in ("ldap", "ldaps") or not url.hostname:
            raise errors.BadInput(f"LDAP URL {settings.url!r}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
        self.settings = settings
        self.uri = f"{url.scheme}://{url.netloc}"
        self._tls = url.scheme == "ldaps" or settings.ca_cert is not None
        self._starttls = url.scheme == "ldap" and settings.ca_cert is not None
        if settings.bind_dn is not None and not self._tls and url.hostname not in _LOOPBACK:
            raise errors.BadInput(
                f"LDAP URL {settings.url}: a bind password is sent only over TLS (give --ca-cert, or use ldaps://)"
            )
        self._password = password
        self._monotonic = monotonic
        self._conn: LDAPObject | None = None
        self._delay = 0.0
        self._retry_at = 0.0
        self._last_error = ""

    def get(self) -> LDAPObject:
        """The bound connection; ``errors.Unreachable`` while the directory is down (at once,
        without trying, until the backoff since the last failure has passed)."""
        if self._conn is not None:
            return self._conn
        if self._delay and self._monotonic() < self._retry_at:
            raise errors.Unreachable(f"LDAP directory {self.uri} unreachable ({self._last_error}); retrying later")
        try:
            conn = self._open()
        except DOWN as exc:
            raise self.down(exc) from None
        self._conn = conn
        self._delay = 0.0
        return conn

    def _open(self) -> LDAPObject:
        conn = ldap.initialize(self.uri)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, NETWORK_TIMEOUT_S)
        conn.set_option(ldap.OPT_TIMEOUT, 30)
        if self._tls:
            if self.settings.ca_cert is not None:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, self.settings.ca_cert)
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        try:
            if self._starttls:
                conn.start_tls_s()
            if self.settings.bind_dn is not None:
                if self._password is None:
                    raise errors.Unreachable("the LDAP bind password is not available to this process")
                conn.simple_bind_s(self.settings.bind_dn, self._password())
            else:
                conn.simple_bind_s("", "")  # anonymous; also makes libldap connect now
        except ldap.INVALID_CREDENTIALS:
            raise errors.BadInput(f"LDAP directory {self.uri}: the bind DN or password was refused") from None
        except ldap.CONNECT_ERROR as exc:
            raise errors.Unreachable(f"LDAP directory {self.uri}: TLS failed ({describe(exc)})") from None
        return conn

    def down(self, exc: ldap.LDAPError) -> errors.Unreachable:
        """Forget the connection and back off; the error to raise."""
        self._conn = None
        self._last_error = describe(exc)
        self._delay = min(BACKOFF_MAX_S, self._delay * 2 if self._delay else BACKOFF_FIRST_S)
        self._retry_at = self._monotonic() + self._delay
        return errors.Unreachable(f"LDAP directory {self.uri} unreachable ({self._last_error})")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(ldap.LDAPError):
                self._conn.unbind_s()
            self._conn = None
