"""The enrollment wire codec: what is encoded decodes to the same message; anything that is
not a canonical encoding of this version is refused as malformed, within bounds."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import enroll_wire, errors
from hsmkm.protocol import EnrollRequest, EnrollResponse, SealedKey

texts = st.text(max_size=80)
blobs = st.binary(max_size=600)
sealed = st.builds(SealedKey, cert_der=blobs, sealed=blobs)
requests = st.builds(EnrollRequest, email=texts, code=texts, csr_der=blobs)
responses = st.builds(
    EnrollResponse,
    email=texts,
    sign_cert_der=blobs,
    encryption=sealed,
    ca_cert_der=blobs,
    salt=st.binary(max_size=enroll_wire.MAX_SALT),
    history=st.lists(sealed, max_size=4),
)


@given(requests)
def test_a_request_round_trips(request: EnrollRequest) -> None:
    data = enroll_wire.encode_request(request)
    assert enroll_wire.decode_request(data) == request
    assert enroll_wire.request_email(data) == request.email


@given(responses)
def test_a_response_round_trips(response: EnrollResponse) -> None:
    assert enroll_wire.decode_response(enroll_wire.encode_response(response)) == response


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_garbage_is_malformed_input(data: bytes) -> None:
    for decode in (enroll_wire.decode_request, enroll_wire.decode_response):
        with pytest.raises(errors.MalformedInput):
            decode(data)


def _request_obj() -> dict[str, object]:
    data = enroll_wire.encode_request(EnrollRequest("alice@example.com", "ABCD-EFGH", b"\x30\x03\x02\x01\x00"))
    return dict(json.loads(data))


def _canon(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"v": True},
        {"v": "1"},
        {"type": "enroll-response"},
        {"extra": 1},
        {"email": 7},
        {"code": None},
        {"csr": "not base64!"},
        {"csr": "QUJD"[:3]},
        {"email": "x" * (enroll_wire.MAX_TEXT + 1)},
        {"csr": base64.b64encode(b"x" * (enroll_wire.MAX_FIELD + 3)).decode()},
    ],
)
def test_a_wrong_field_is_malformed_input(change: dict[str, object]) -> None:
    obj = {**_request_obj(), **change}
    with pytest.raises(errors.MalformedInput):
        enroll_wire.decode_request(_canon(obj))


def test_missing_fields_and_other_shapes_are_malformed_input() -> None:
    obj = _request_obj()
    del obj["csr"]
    for data in (
        _canon(obj),
        b"[]",
        b'"x"',
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        "é".encode(),
    ):
        with pytest.raises(errors.MalformedInput):
            enroll_wire.decode_request(data)


def test_only_the_canonical_form_is_accepted() -> None:
    good = enroll_wire.encode_request(EnrollRequest("a@example.com", "CODE", b"csr"))
    spaced = json.dumps(json.loads(good), sort_keys=True).encode()
    unsorted = json.dumps(dict(reversed(list(json.loads(good).items()))), separators=(",", ":")).encode()
    for data in (spaced, unsorted, good + b"\n"):
        assert data != good
        with pytest.raises(errors.MalformedInput):
            enroll_wire.decode_request(data)


def test_an_oversized_message_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(errors.MalformedInput, match="over the limit"):
        enroll_wire.decode_request(b" " * (enroll_wire.MAX_REQUEST + 1))
    with pytest.raises(errors.MalformedInput, match="over the limit"):
        enroll_wire.decode_response(b" " * (enroll_wire.MAX_RESPONSE + 1))


def test_a_response_with_too_long_a_history_is_refused() -> None:
    item = SealedKey(b"c", b"s")
    big = EnrollResponse(
        "a@example.com",
        b"s",
        item,
        b"ca",
        b"salt",
        [item] * (enroll_wire.MAX_HISTORY + 1),
    )
    obj = json.loads(
        _canon(
            {
                "v": 1,
                "type": "enroll-response",
                "email": big.email,
                "sign_cert": "cw==",
                "ca_cert": "Y2E=",
                "salt": "c2FsdA==",
                "encryption": {"cert": "Yw==", "sealed": "cw=="},
                "history": [{"cert": "Yw==", "sealed": "cw=="}] * len(big.history),
            }
        )
    )
    with pytest.raises(errors.MalformedInput, match="history"):
        enroll_wire.decode_response(_canon(obj))
