"""RFC 7512 PKCS#11 URIs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.keys.uri import ObjectType, Pkcs11Uri, is_pkcs11_uri


def test_parses_the_cli_example() -> None:
    u = Pkcs11Uri.parse(
        "pkcs11:token=alice;object=alice-sign;type=private;id=%01%02"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:ALICE_PIN"
    )
    assert u.token == "alice" and u.object == "alice-sign" and u.type is ObjectType.PRIVATE
    assert u.id == b"\x01\x02" and u.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert u.pin_source == "env:ALICE_PIN"


def test_rfc7512_examples() -> None:
    u = Pkcs11Uri.parse("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=")
    assert u.token == "The Software PKCS#11 Softtoken" and u.manufacturer == "Snake Oil, Inc."
    assert u.id == bytes.fromhex("69953e5cf4bdec91") and u.serial == ""
    assert Pkcs11Uri.parse("pkcs11:").token is None
    assert Pkcs11Uri.parse("pkcs11:slot-description=Sun%20Metaslot").slot_description == "Sun Metaslot"


@pytest.mark.parametrize("bad", ["pkcs11", "file:x", "pkcs11:token", "pkcs11:token=a;token=b",
                                 "pkcs11:nonsense=1", "pkcs11:type=weird", "pkcs11:token=%ZZ%"])
def test_malformed_uris_are_refused(bad: str) -> None:
    with pytest.raises(errors.BadInput):
        Pkcs11Uri.parse(bad)


def test_pin_value_is_refused_without_echoing_it() -> None:
    with pytest.raises(errors.SecretSourceError) as exc:
        Pkcs11Uri.parse("pkcs11:token=a?pin-value=123456")
    assert "123456" not in str(exc.value)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(token=st.none() | text, obj=st.none() | text, kid=st.none() | st.binary(max_size=20),
       module=st.none() | text, pin=st.none() | text, typ=st.none() | st.sampled_from(list(ObjectType)))
def test_round_trip(token, obj, kid, module, pin, typ) -> None:  # type: ignore[no-untyped-def]
    u = Pkcs11Uri(token=token, object=obj, id=kid, module_path=module, pin_source=pin, type=typ)
    assert Pkcs11Uri.parse(u.to_uri()) == u
    assert is_pkcs11_uri(u.to_uri())
