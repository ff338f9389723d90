"""The KM's end of the enrollment wire: an encoded request in, the encoded response out."""

from __future__ import annotations

from hsmkm.enroll_wire import decode_request, encode_response
from hsmkm.km.enroll import enroll
from hsmkm.km.manager import KeyManager


def answer(km: KeyManager, request: bytes) -> bytes:
    """Decode the request (malformed: ``MalformedInput``, nothing done), enroll, encode."""
    return encode_response(enroll(km, decode_request(request)))
