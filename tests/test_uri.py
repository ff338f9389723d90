"""RFC 7512 PKCS#11 URIs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.keys.uri import EpfPath, ObjectType, Pkcs11Uri, classify_keystore_ref, is_pkcs11_uri


def test_parses_the_cli_example() -> None:
    text = (
        "pkcs11:token=alice;object=alice-sign;type=private;id=%01%02"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:ALICE_PIN"
    )
    u = Pkcs11Uri.parse(text)
    assert u.token == "alice" and u.object == "alice-sign" and u.type is ObjectType.PRIVATE
    assert u.id == b"\x01\x02" and u.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert u.pin_source == "env:ALICE_PIN"
    assert u.to_uri() == text and str(u) == text


def test_rfc7512_examples() -> None:
    u = Pkcs11Uri.parse(
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;"
        "model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
    )
    assert u.token == "The Software PKCS#11 Softtoken" and u.manufacturer == "Snake Oil, Inc."
    assert u.id == bytes.fromhex("69953e5cf4bdec91") and u.serial == "" and u.type is ObjectType.CERT
    assert Pkcs11Uri.parse("pkcs11:") == Pkcs11Uri()
    assert Pkcs11Uri.parse("pkcs11:slot-description=Sun%20Metaslot").slot_description == "Sun Metaslot"
    u = Pkcs11Uri.parse(
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token;library-version=1.23"
    )
    assert u.library_version == "1.23" and u.library_description == "Soft Token"
    u = Pkcs11Uri.parse("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11")
    assert u.module_name == "mypkcs11"
    u = Pkcs11Uri.parse(
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-source=file:/etc/token_pin"
    )
    assert u.pin_source == "file:/etc/token_pin"
    u = Pkcs11Uri.parse("pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1")
    assert u.module_path == "/mnt/libmypkcs11.so.1"
    u = Pkcs11Uri.parse(
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert"
    )
    assert u.token == "Name with a small A with acute: \u00e1"
    u = Pkcs11Uri.parse(
        "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b".replace(
            "vendor-", "x-"
        )
    )
    assert u.vendor == (("x-aaa", "value-a"),) and u.vendor_query == (("x-bbb", "value-b"),)
    assert Pkcs11Uri.parse("pkcs11:slot-manufacturer=Snake%20Oil,%20Inc.;slot-id=2").slot_id == "2"
    assert Pkcs11Uri.parse("PKCS11:token=a").token == "a"


def test_vendor_attributes_keep_their_place_and_order() -> None:
    text = "pkcs11:token=t;x-b=2;x-a=1?module-path=/m.so&x-q=a/b"
    u = Pkcs11Uri.parse(text)
    assert u.vendor == (("x-b", "2"), ("x-a", "1")) and u.vendor_query == (("x-q", "a/b"),)
    assert u.to_uri() == text


def test_canonical_form() -> None:
    u = Pkcs11Uri.parse("pkcs11:id=%aB;object=%61%20b;token=x?pin-source=env:P&module-path=%2Fm.so")
    assert u.to_uri() == "pkcs11:token=x;object=a%20b;id=%AB?module-path=/m.so&pin-source=env:P"


@pytest.mark.parametrize(
    "bad",
    [
        "pkcs11",
        "file:x",
        "pkcs11:token",
        "pkcs11:=a",
        "pkcs11:token=a;token=b",
        "pkcs11:token=a?pin-source=env:A&pin-source=env:B",
        "pkcs11:nonsense=1",
        "pkcs11:token=a?nonsense=1",
        "pkcs11:type=weird",
        "pkcs11:token=%ZZ",
        "pkcs11:token=%4",
        "pkcs11:token=a b",
        "pkcs11:token=a/b",
        "pkcs11:token=\u00e1",
        "pkcs11:token=a#frag",
        "pkcs11:token=a;",
        "pkcs11:;token=a",
        "pkcs11:token=a?module-path=/m.so&",
        "pkcs11:token=a?module-path=/m;so",
        "pkcs11:module-path=/m.so",
        "pkcs11:token=a?object=b",
        "pkcs11:slot-id=two",
        "pkcs11:library-version=1.2.3",
        "pkcs11:token=%FF",
        "pkcs11:x-=1",
    ],
)
def test_malformed_uris_are_refused(bad: str) -> None:
    with pytest.raises(errors.MalformedInput) as exc:
        Pkcs11Uri.parse(bad)
    message = str(exc.value)
    assert message.startswith("PKCS#11 URI: ") and "\n" not in message


def test_pin_value_is_refused_without_echoing_it() -> None:
    for text in (
        "pkcs11:token=a?pin-value=123456",
        "pkcs11:token=a?pin-source=env:P&pin-value=123456",
        "pkcs11:token=a;pin-value=123456",
    ):
        with pytest.raises(errors.SecretSourceError) as exc:
            Pkcs11Uri.parse(text)
        assert "123456" not in str(exc.value) and "pin-source" in str(exc.value)


def test_with_and_validation() -> None:
    u = Pkcs11Uri.parse("pkcs11:token=alice?module-path=/m.so")
    v = u.with_(object="alice-sign", type=ObjectType.PRIVATE)
    assert v.to_uri() == "pkcs11:token=alice;object=alice-sign;type=private?module-path=/m.so"
    assert u.object is None
    with pytest.raises(errors.MalformedInput):
        u.with_(slot_id="x")
    with pytest.raises(TypeError):
        u.with_(pin_value="1234")


def test_classify_keystore_ref() -> None:
    ref = classify_keystore_ref("pkcs11:token=bob?pin-source=env:BOB_PIN")
    assert isinstance(ref, Pkcs11Uri) and ref.token == "bob"
    assert classify_keystore_ref("alice.epf") == EpfPath(Path("alice.epf"))
    assert classify_keystore_ref("/tmp/x/pkcs11:odd.epf") == EpfPath(Path("/tmp/x/pkcs11:odd.epf"))
    for bad in ("", "  ", "a\x00b", "pkcs11:token=a;token=b"):
        with pytest.raises(errors.MalformedInput):
            classify_keystore_ref(bad)
    assert is_pkcs11_uri("Pkcs11:token=a") and not is_pkcs11_uri("./pkcs11:x")


text = st.text(st.characters(codec="utf-8"), max_size=20)
vendor_names = st.from_regex(r"x-[A-Za-z0-9_-]{1,8}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "token": text,
            "manufacturer": text,
            "serial": text,
            "model": text,
            "library_manufacturer": text,
            "library_description": text,
            "library_version": st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3})?", fullmatch=True),
            "slot_description": text,
            "slot_manufacturer": text,
            "slot_id": st.integers(0, 2**32).map(str),
            "object": text,
            "type": st.sampled_from(list(ObjectType)),
            "id": st.binary(max_size=20),
            "module_name": text,
            "module_path": text,
            "pin_source": text,
        },
    ),
    vendor=st.lists(st.tuples(vendor_names, text), max_size=3, unique_by=lambda t: t[0]),
    vendor_query=st.lists(st.tuples(vendor_names, text), max_size=3, unique_by=lambda t: t[0]),
)
def test_round_trip(
    fields: dict[str, object], vendor: list[tuple[str, str]], vendor_query: list[tuple[str, str]]
) -> None:
    names = {n for n, _ in vendor}
    vendor_query = [(n, v) for n, v in vendor_query if n not in names]
    u = Pkcs11Uri(**fields, vendor=tuple(vendor), vendor_query=tuple(vendor_query))  # type: ignore[arg-type]
    text = u.to_uri()
    assert is_pkcs11_uri(text)
    assert Pkcs11Uri.parse(text) == u
    assert Pkcs11Uri.parse(text).to_uri() == text
    assert text.isascii() and " " not in text and "#" not in text
