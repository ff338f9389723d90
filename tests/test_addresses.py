"""Addresses (RFC 5321/6531 Mailbox with length limits) and display names, as properties."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm import addresses, errors

FOLDER = Path("/srv/km/pub/certs")
_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+=?^_`{|}~-"
atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
valid = st.builds(
    lambda loc, dom, tld: f"{'.'.join(loc)}@{'.'.join(dom)}.{tld}",
    st.lists(atoms, min_size=1, max_size=4),
    st.lists(labels, min_size=1, max_size=3),
    st.sampled_from(["com", "org", "example", "de"]),
)


@given(valid)
def test_valid_addresses_are_kept_with_the_domain_lower_cased(email: str) -> None:
    local, _, domain = email.rpartition("@")
    norm = addresses.normalize_email(f"{local}@{domain.upper()}")
    assert norm == email
    assert addresses.normalize_email(norm) == norm
    local, _, domain = norm.rpartition("@")
    assert domain == domain.lower() and len(local.encode()) <= 64


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_any_text_is_an_address_that_stays_in_its_folder_or_refused(text: str) -> None:
    try:
        email = addresses.normalize_email(text)
    except errors.BadInput:
        return
    path = addresses.address_file(FOLDER, email, ".enc.crt")
    assert path.parent == FOLDER and os.path.normpath(path) == str(path)
    assert "/" not in email and "\\" not in email and ".." not in email
    assert all(ch.isprintable() and not ch.isspace() for ch in email)
    assert len(email.encode()) <= addresses.MAX_ADDRESS_OCTETS
    assert addresses.normalize_email(email) == email


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_any_text_is_a_printable_name_of_at_most_64_characters_or_refused(text: str) -> None:
    try:
        name = addresses.check_name(text)
    except errors.BadInput:
        return
    assert name is None or (name.isprintable() and 1 <= len(name) <= addresses.MAX_NAME_CHARS)


@pytest.mark.parametrize(
    "email, why",
    [
        ("x" * 64 + "@example.com", None),
        ("x" * 65 + "@example.com", "local part is over 64"),
        ("a@" + ".".join(["b" * 63, "c" * 63, "d" * 63]) + ".com", None),
        ("a@" + "b" * 64 + ".com", "label is over 63"),
        ("a" * 60 + "@" + ".".join(["b" * 60] * 4) + ".com", "over 254"),
        (".alice@example.com", "dot"),
        ("alice.@example.com", "dot"),
        ("a..b@example.com", "dot"),
        ("../../../../PWNED/evil@example.com", "dot"),
        ("a/b@example.com", "character"),
        ('"quoted"@example.com', "quoted"),
        ("alice@[10.0.0.1]", "literal"),
        ("alice@localhost", "two labels"),
        ("jürgen@bücher.example", None),
        ("alice@EXAMPLE.com", None),
    ],
)
def test_length_limits_and_forms(email: str, why: str | None) -> None:
    if why is None:
        assert addresses.normalize_email(email).endswith(email.rpartition("@")[2].lower())
    else:
        with pytest.raises(errors.BadInput, match=why):
            addresses.normalize_email(email)
