"""Users' addresses and display names as hsmkm accepts them, and the file names made from them.

An address is an RFC 5321 Mailbox (RFC 6531 allows UTF-8 in it): a dot-atom local part of at
most 64 octets, ``@``, a domain of LDH (or UTF-8) labels of at most 63 octets each and 255 in
all, 254 octets for the whole. Quoted local parts and address literals are refused: a file
name, a certificate and an LDAP entry are made from the address, and those forms only ever
serve to smuggle characters in. ``/`` is valid atext but never a file name's character, so
it is refused too.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from hsmkm import errors

MAX_LOCAL_OCTETS = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN_OCTETS = 255  # RFC 5321 §4.5.3.1.2
MAX_LABEL_OCTETS = 63  # RFC 1035 §2.3.4
MAX_ADDRESS_OCTETS = 254  # the 256-octet path less its angle brackets
MAX_NAME_CHARS = 64  # what a certificate's commonName holds (RFC 5280 ub-common-name)

# RFC 5322 atext less "/", which would name a folder in a file name.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+=?^_`{|}~-")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _utf8_ok(ch: str) -> bool:
    """A non-ASCII character RFC 6531 allows: a letter, mark, number or symbol, nothing invisible."""
    return ord(ch) > 0x7F and unicodedata.category(ch)[0] in "LMNS"


def _bad(text: str, why: str) -> errors.BadInput:
    return errors.BadInput(f"not an email address: {text!r} ({why})")


def normalize_email(text: str) -> str:
    """The address in the form hsmkm stores (NFC, domain lower-cased), or BadInput."""
    email = unicodedata.normalize("NFC", text.strip(" \t"))
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise _bad(email, "it needs a local part, @ and a domain")
    if local.startswith('"'):
        raise _bad(email, "quoted local parts are not accepted")
    if domain.startswith("["):
        raise _bad(email, "address literals are not accepted")
    if len(local.encode()) > MAX_LOCAL_OCTETS:
        raise _bad(email, f"the local part is over {MAX_LOCAL_OCTETS} octets")
    if len(domain.encode()) > MAX_DOMAIN_OCTETS:
        raise _bad(email, f"the domain is over {MAX_DOMAIN_OCTETS} octets")
    if len(email.encode()) > MAX_ADDRESS_OCTETS:
        raise _bad(email, f"it is over {MAX_ADDRESS_OCTETS} octets")
    for atom in local.split("."):
        if not atom:
            raise _bad(email, "a dot at the start or end of the local part, or two in a row")
        if not all(ch in _ATEXT or _utf8_ok(ch) for ch in atom):
            raise _bad(email, "a character not allowed in the local part")
    labels = domain.split(".")
    if len(labels) < 2:
        raise _bad(email, "the domain needs at least two labels")
    for label in labels:
        if not label:
            raise _bad(email, "an empty label in the domain")
        if len(label.encode()) > MAX_LABEL_OCTETS:
            raise _bad(email, f"a domain label is over {MAX_LABEL_OCTETS} octets")
        if label[0] == "-" or label[-1] == "-":
            raise _bad(email, "a domain label starts or ends with a hyphen")
        if not all(ch in _LDH or _utf8_ok(ch) for ch in label):
            raise _bad(email, "a character not allowed in the domain")
    return f"{local}@{domain.lower()}"


def check_name(name: str | None) -> str | None:
    """A display name: at most 64 printable characters (surrounding blanks dropped); None or
    empty means no name."""
    if name is None:
        return None
    name = unicodedata.normalize("NFC", name.strip(" "))
    if not name:
        return None
    if len(name) > MAX_NAME_CHARS:
        raise errors.BadInput(f"a name has at most {MAX_NAME_CHARS} characters (this one has {len(name)})")
    if not name.isprintable():
        raise errors.BadInput(f"a name must be printable characters only: {name!r}")
    return name


def address_file(folder: Path, email: str, suffix: str) -> Path:
    """``folder/EMAIL{suffix}`` for a valid address; never a path outside ``folder``."""
    name = normalize_email(email) + suffix
    path = folder / name
    if "/" in name or "\x00" in name or name in (".", "..") or path.parent != folder:
        raise errors.BadInput(f"not an email address: {email!r}")
    return path
