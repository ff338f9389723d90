"""``GET /directory/{email}``: a user's current encryption and signing certificates, one DER
(``application/pkix-cert``, ``?use=encryption|signing``), a JSON list, or a PEM bundle, by
Accept; 404 when the user is unknown or has no current certificate (revoked)."""

from __future__ import annotations

import base64
import json
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.requests import Request
from starlette.responses import Response

from hsmkm import errors
from hsmkm.addresses import normalize_email
from hsmkm.certnames import CertKind
from hsmkm.km import directory
from hsmkm.km.manager import KeyManager
from hsmkm.server.problems import JSON
from hsmkm.server.runner import KmRunner

PKIX_CERT = "application/pkix-cert"
PEM_CHAIN = "application/pem-certificate-chain"
MAX_ACCEPT = 1024
# Directory entries change at enrollment and revocation: a client asks again after a minute.
CACHE = {"Cache-Control": "max-age=60"}


class Use(str, Enum):
    ENCRYPTION = "encryption"
    SIGNING = "signing"


KIND_OF = {Use.ENCRYPTION: CertKind.ENCRYPT, Use.SIGNING: CertKind.SIGN}
USE_OF = {kind: use for use, kind in KIND_OF.items()}


class Representation(str, Enum):
    DER = PKIX_CERT
    JSON = JSON
    PEM = PEM_CHAIN


def choose(accept: str | None) -> Representation:
    """The representation an Accept header prefers (q-values honoured); PEM when it names none
    of ours, ``*/*`` or nothing."""
    if not accept or len(accept) > MAX_ACCEPT:
        return Representation.PEM
    best: tuple[float, int, Representation] | None = None
    for position, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        try:
            rep = Representation(media.lower())
        except ValueError:
            continue
        if q > 0 and (best is None or (q, -position) > (best[0], best[1])):
            best = (q, -position, rep)
    return best[2] if best else Representation.PEM


def _entry(km: KeyManager, email: str) -> dict[CertKind, x509.Certificate]:
    return directory.current_entry(km.db, email)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class DirectoryRoutes:
    def __init__(self, runner: KmRunner) -> None:
        self.runner = runner

    async def lookup(self, request: Request) -> Response:
        email = request.path_params["email"]
        rep = choose(request.headers.get("accept"))
        use_param = request.query_params.get("use", Use.ENCRYPTION.value)
        try:
            use = Use(use_param)
        except ValueError:
            raise errors.BadInput("use must be encryption or signing") from None
        entry = await self.runner.call(_entry, email)
        if not entry:
            raise errors.NotFound("no current certificate for this address")
        ordered = [(kind, entry[kind]) for kind in (CertKind.ENCRYPT, CertKind.SIGN) if kind in entry]
        if rep is Representation.DER:
            cert = entry.get(KIND_OF[use])
            if cert is None:
                raise errors.NotFound(f"no current {use.value} certificate for this address")
            return Response(cert.public_bytes(serialization.Encoding.DER), media_type=PKIX_CERT, headers=CACHE)
        if rep is Representation.JSON:
            body = {
                "email": normalize_email(email),
                "certificates": [
                    {
                        "use": USE_OF[kind].value,
                        "serial": format(cert.serial_number, "x"),
                        "not_after": cert.not_valid_after_utc.isoformat(),
                        "der": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
                    }
                    for kind, cert in ordered
                ],
            }
            return Response(json.dumps(body) + "\n", media_type=JSON, headers=CACHE)
        return Response(b"".join(_pem(c) for _, c in ordered), media_type=PEM_CHAIN, headers=CACHE)
