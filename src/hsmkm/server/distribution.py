"""The CA certificate and the CRLs at the paths the certificates name, from the database, with
the validators and freshness of RFC 9110 / 9111: a strong ETag (the same bytes on every node),
Last-Modified, 304 on a conditional GET, and Cache-Control until the CRL's nextUpdate."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from enum import Enum
from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import Response

from hsmkm.clock import Clock
from hsmkm.km import artifacts
from hsmkm.km.manager import KeyManager
from hsmkm.server.problems import error_response
from hsmkm.server.runner import KmRunner
from hsmkm.store.repos.artifacts import Artifact, ArtifactKind, ArtifactStamp

# The CA certificate changes only at a ceremony; a client may keep it an hour without asking.
CA_MAX_AGE = timedelta(hours=1)
# A CRL past its nextUpdate (a publisher behind): clients ask again soon.
STALE_MAX_AGE = timedelta(minutes=1)


class DistributionPath(str, Enum):
    CA_CERT = "/ca.crt"
    FULL_CRL = "/crl/full.crl"
    DELTA_CRL = "/crl/delta.crl"


KIND_OF = {
    DistributionPath.CA_CERT: ArtifactKind.CA_CERTIFICATE,
    DistributionPath.FULL_CRL: ArtifactKind.FULL_CRL,
    DistributionPath.DELTA_CRL: ArtifactKind.DELTA_CRL,
}
MEDIA_OF = {
    ArtifactKind.CA_CERTIFICATE: "application/pkix-cert",
    ArtifactKind.FULL_CRL: "application/pkix-crl",
    ArtifactKind.DELTA_CRL: "application/pkix-crl",
}


def _current(km: KeyManager, kind: ArtifactKind) -> Artifact | None:
    return artifacts.current(km.db, kind)


def _stamp(km: KeyManager, kind: ArtifactKind) -> ArtifactStamp | None:
    return artifacts.stamp(km.db, kind)


def http_date(when: datetime) -> str:
    return format_datetime(when.replace(microsecond=0), usegmt=True)


def _parse_http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else None


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match (RFC 9110 §13.1.2): ``*`` or a list of tags, compared weakly."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


def not_modified(request: Request, artifact: Artifact) -> bool:
    """Whether a conditional GET may be answered 304: If-None-Match decides when present
    (RFC 9110 §13.2.2), else If-Modified-Since against Last-Modified."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        return _etag_matches(inm, artifact.etag)
    ims = request.headers.get("if-modified-since")
    if ims is None:
        return False
    since = _parse_http_date(ims)
    modified = datetime.fromisoformat(artifact.modified_at).replace(microsecond=0)
    return since is not None and modified <= since


def max_age(artifact: Artifact, now: datetime) -> int:
    """Seconds a cache may keep the artifact: a CRL until its nextUpdate, the CA an hour."""
    if artifact.next_update is None:
        return int(CA_MAX_AGE.total_seconds())
    left = datetime.fromisoformat(artifact.next_update) - now
    if left <= timedelta(0):
        return int(STALE_MAX_AGE.total_seconds())
    return int(left.total_seconds())


def headers_for(artifact: Artifact, now: datetime) -> dict[str, str]:
    return {
        "ETag": artifact.etag,
        "Last-Modified": http_date(datetime.fromisoformat(artifact.modified_at)),
        "Cache-Control": f"public, max-age={max_age(artifact, now)}",
    }


class Distribution:
    """The handlers of the distribution paths."""

    def __init__(self, runner: KmRunner, clock: Clock) -> None:
        self.runner = runner
        self.clock = clock
        # the bytes last read of each kind: each request reads only the digest, and the bytes
        # again only when it changed (another node or the CLI published meanwhile)
        self._cache: dict[ArtifactKind, Artifact] = {}

    async def _artifact(self, kind: ArtifactKind) -> Artifact | None:
        stamp = await self.runner.call(_stamp, kind)
        if stamp is None:
            return None
        cached = self._cache.get(kind)
        if cached is not None and cached.sha256 == stamp.sha256 and cached.modified_at == stamp.modified_at:
            return cached
        artifact = await self.runner.call(_current, kind)
        if artifact is not None:
            self._cache[kind] = artifact
        return artifact

    async def serve(self, request: Request) -> Response:
        path = DistributionPath(request.url.path)
        kind = KIND_OF[path]
        artifact = await self._artifact(kind)
        if artifact is None:
            return error_response(HTTPStatus.NOT_FOUND, f"{path.value} is not published yet")
        headers = headers_for(artifact, self.clock())
        if not_modified(request, artifact):
            return Response(status_code=HTTPStatus.NOT_MODIFIED, headers=headers)
        return Response(artifact.der, headers=headers, media_type=MEDIA_OF[kind])
