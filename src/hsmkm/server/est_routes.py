"""EST (RFC 7030 with RFC 8951's clarifications) under ``/.well-known/est/``, and hsmkm's own
``/hsmkm/est/keyhistory``: the requests checked here (content type, HTTP Basic, the CSR's
base64, parse and signature) before the KM is asked, so that a malformed request changes
nothing and counts no attempt of a code."""

from __future__ import annotations

import base64
import binascii
from http import HTTPStatus

from cryptography import x509
from starlette.requests import Request
from starlette.responses import Response

from hsmkm import errors
from hsmkm.addresses import normalize_email
from hsmkm.est import certsonly, csr, csrattrs, multipart, transfer
from hsmkm.est.media import MediaType, SmimeType, parse_content_type, pkcs7
from hsmkm.km import est_enroll
from hsmkm.km.enroll_common import check_csr_names
from hsmkm.server.accesslog import ADDRESS, note
from hsmkm.server.problems import StageConflict, Unauthenticated, UnsupportedMediaType
from hsmkm.server.runner import KmRunner

MAX_AUTHORIZATION = 1024
MAX_ADDRESS = 254
# RFC 7030 §3.2.3: the code is a password; responses holding keys are not for caches
NO_STORE = {"Cache-Control": "no-store"}


def basic_credentials(header: str | None) -> tuple[str, str]:
    """(user, password) of an ``Authorization: Basic`` header (RFC 7617, UTF-8)."""
    if header is None:
        raise Unauthenticated("credentials required: HTTP Basic, the address and its enrollment code")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Unauthenticated("only HTTP Basic authentication is accepted")
    if len(header) > MAX_AUTHORIZATION:
        raise Unauthenticated("the Authorization header is too long")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthenticated("malformed HTTP Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password or len(user) > MAX_ADDRESS:
        raise Unauthenticated("malformed HTTP Basic credentials")
    if not user.isprintable() or not password.isprintable():
        raise Unauthenticated("malformed HTTP Basic credentials")
    return user, password


def _require_pkcs10(request: Request) -> None:
    given = request.headers.getlist("content-type")
    if len(given) > 1:  # as with Authorization: which one counts would depend on who reads it
        raise errors.MalformedInput("more than one Content-Type header")
    header = given[0] if given else None
    if header is None:
        raise UnsupportedMediaType("Content-Type must be application/pkcs10")
    try:
        ctype = parse_content_type(header)
    except errors.MalformedInput:
        raise UnsupportedMediaType("Content-Type must be application/pkcs10") from None
    if not ctype.is_(MediaType.PKCS10):
        raise UnsupportedMediaType(f"Content-Type {ctype.media}: must be application/pkcs10")


def certs_only_body(certs: list[x509.Certificate]) -> bytes:
    return transfer.encode(certsonly.encode(certs))


class EstRoutes:
    """The handlers of the EST paths, on one worker's KM."""

    def __init__(self, runner: KmRunner) -> None:
        self.runner = runner

    async def cacerts(self, request: Request) -> Response:
        certs = await self.runner.call(est_enroll.ca_certificates)
        return Response(certs_only_body(certs), media_type=pkcs7(SmimeType.CERTS_ONLY))

    async def csrattrs(self, request: Request) -> Response:
        der = await self.runner.call(est_enroll.csr_attributes)
        csrattrs.decode(der)  # what we send is what a client can read
        return Response(transfer.encode(der), media_type=MediaType.CSRATTRS.value)

    async def _enrollment(self, request: Request, server_keygen: bool) -> tuple[str, str, csr.EstCsr]:
        """The address, code and checked CSR of an enrollment POST, or the 4xx error."""
        _require_pkcs10(request)
        given = request.headers.getlist("authorization")
        if len(given) > 1:  # which one counts would depend on who reads it (RFC 9110 §5.3)
            raise errors.MalformedInput("more than one Authorization header")
        email, code = basic_credentials(given[0] if given else None)
        note(request.scope, ADDRESS, email)
        req = csr.read(await request.body())
        if server_keygen:
            csr.for_server_keygen(req)
        return email, code, req

    async def simpleenroll(self, request: Request) -> Response:
        email, code, req = await self._enrollment(request, server_keygen=False)
        cert = await self.runner.call(est_enroll.simple_enroll, email, code, req)
        return Response(certs_only_body([cert]), media_type=pkcs7(SmimeType.CERTS_ONLY), headers=NO_STORE)

    async def serverkeygen(self, request: Request) -> Response:
        email, code, req = await self._enrollment(request, server_keygen=True)
        issued = await self.runner.call(est_enroll.server_keygen, email, code, req)
        encoded = multipart.encode(multipart.ServerKeygenParts(issued.key_part, certsonly.encode([issued.cert])))
        return Response(encoded.body, media_type=encoded.content_type, headers=NO_STORE)

    async def keyhistory(self, request: Request) -> Response:
        email, code, req = await self._enrollment(request, server_keygen=True)
        try:
            address = normalize_email(email)
        except errors.BadInput:
            pass  # the KM refuses it as it refuses an unknown address
        else:
            check_csr_names(req.csr, address)  # a CSR for another address: 400, not a stage conflict
        try:
            history = await self.runner.call(est_enroll.key_history, email, code, req)
        except errors.PolicyViolation as exc:  # asked before this code's serverkeygen
            raise StageConflict(str(exc)) from None
        if not history:
            return Response(status_code=HTTPStatus.NO_CONTENT, headers=NO_STORE)
        encoded = multipart.encode_many(
            [multipart.ServerKeygenParts(k.key_part, certsonly.encode([k.cert])) for k in history]
        )
        return Response(encoded.body, media_type=encoded.content_type, headers=NO_STORE)
