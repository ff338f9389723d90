"""One small HTTP(S) client on the standard library, for talking to a ``hsmkm serve``.

TLS trusts only the profile's CA (never the system store) and checks the host name; connect
and read are bounded in time, bodies in size. A status is answered as the hsmkm error it
means, with the server's one line. Plain ``http://`` is only for fetching published,
signed artifacts (CRLs, the CA certificate) by the URLs the certificates name.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
MAX_BODY = 4 << 20
MAX_LINE = 200  # of the server's error message kept in ours
ATTEMPTS = 3  # a request lost on the way is sent this many times in all
RETRY_PAUSE = 0.5


class Scheme(str, Enum):
    HTTPS = "https"
    HTTP = "http"


class ConnectionLost(errors.Unreachable):
    """The connection broke or timed out after it was made: the request may or may not have
    reached the server, so sending it again (an idempotent retry) is the way forward."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def tls_context(ca: x509.Certificate) -> ssl.SSLContext:
    """TLS 1.2 or later, the server's certificate checked against ``ca`` alone, host name checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return ctx


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def server_line(resp: Response) -> str:
    """The server's one-line reason: a problem document's detail (RFC 9457) or the first text line."""
    ctype = (resp.header("content-type") or "").split(";")[0].strip().lower()
    text = ""
    if ctype == "application/problem+json":
        try:
            doc = json.loads(resp.body[:8192])
            text = str(doc.get("detail") or doc.get("title") or "") if isinstance(doc, dict) else ""
        except ValueError:
            text = ""
    elif ctype.startswith("text/"):
        text = resp.body[:8192].decode("utf-8", "replace").strip().split("\n")[0]
    text = " ".join(text.split())[:MAX_LINE]
    return text or f"HTTP {resp.status}"


def refusal(resp: Response, what: str) -> errors.HsmkmError:
    """The hsmkm error for a non-success status."""
    line = f"{what}: {server_line(resp)}"
    status = resp.status
    if status in (401, 403):
        return errors.CodeRejected(line)
    if status == 404:
        return errors.NotFound(line)
    if status == 409:
        return errors.PolicyViolation(line)
    if status in (413, 415):
        return errors.MalformedInput(line)
    if 400 <= status < 500:
        return errors.BadInput(line)
    if status >= 500:
        return errors.Unreachable(line)
    return errors.Unreachable(f"{what}: an unexpected HTTP {status} from the server")


class HttpClient:
    """Requests to one origin (``https://HOST:PORT`` trusted through ``ca``, or a plain
    ``http://`` one for published artifacts); each request on a new connection."""

    def __init__(
        self,
        base_url: str,
        ca: x509.Certificate | None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {s.value for s in Scheme} or not parts.hostname:
            raise errors.BadInput(f"not an http(s) URL: {base_url!r}")
        try:
            self.port = parts.port
        except ValueError:
            raise errors.BadInput(f"a bad port in {base_url!r}") from None
        self.scheme = Scheme(parts.scheme)
        if self.scheme is Scheme.HTTPS and ca is None:
            raise errors.BadInput("an https:// server needs the profile's CA certificate (--ca-cert FILE)")
        self.host = parts.hostname
        self.prefix = parts.path.rstrip("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._context = tls_context(ca) if self.scheme is Scheme.HTTPS and ca is not None else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self._context is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self._context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = MAX_BODY,
    ) -> Response:
        """One request and its whole answer (at most ``limit`` octets of body). Failing to
        connect is ``Unreachable``; a connection lost after it was made is ``ConnectionLost``;
        a server certificate the profile's CA did not issue is ``ValidationFailed``."""
        where = f"{self.origin}{self.prefix}{path}"
        conn = self._connection()
        try:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as exc:
                raise errors.ValidationFailed(
                    f"{self.origin}: the server's TLS certificate is not trusted by the profile's CA "
                    f"({exc.verify_message or 'verification failed'})"
                ) from None
            except (ssl.SSLError, OSError) as exc:
                raise errors.Unreachable(f"{self.origin}: cannot connect ({_reason(exc)})") from None
            if conn.sock is not None:
                conn.sock.settimeout(self.read_timeout)
            try:
                # one request per connection, and the server told so
                conn.request(method, self.prefix + path, body=body, headers={**(headers or {}), "Connection": "close"})
                raw = conn.getresponse()
                resp_headers = {k.lower(): v for k, v in raw.getheaders()}
                length = resp_headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise errors.MalformedInput(f"{where}: an answer of {length} octets (at most {limit})")
                data = raw.read(limit + 1)
            except errors.HsmkmError:
                raise
            except (TimeoutError, ConnectionError, http.client.IncompleteRead, ssl.SSLError) as exc:
                raise ConnectionLost(f"{where}: the connection was lost ({_reason(exc)})") from None
            except (http.client.HTTPException, OSError) as exc:
                raise errors.Unreachable(f"{where}: not a usable HTTP answer ({_reason(exc)})") from None
            if len(data) > limit:
                raise errors.MalformedInput(f"{where}: an answer over {limit} octets")
            return Response(raw.status, resp_headers, data)
        finally:
            conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0][:MAX_LINE] if text else type(exc).__name__


T = TypeVar("T")


def with_retries(
    call: Callable[[], T],
    attempts: int = ATTEMPTS,
    pause: float = RETRY_PAUSE,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, again (up to ``attempts`` times in all) while its connection is lost on the way."""
    for attempt in range(1, attempts):
        try:
            return call()
        except ConnectionLost:
            sleep(pause * attempt)
    return call()
