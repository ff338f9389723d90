"""Distinguished names from the command line (RFC 4514 strings)."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from hsmkm import errors


def parse_dn(text: str, require_cn: bool = True) -> x509.Name:
    """An x509.Name from an RFC 4514 string such as "CN=hsmkm CA,O=Example,C=DE"."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        detail = str(exc).strip() or "syntax error"
        raise errors.MalformedInput(f"not an RFC 4514 distinguished name: {text!r} ({detail})") from None
    if not name.rdns:
        raise errors.MalformedInput("a distinguished name must not be empty")
    if require_cn and not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise errors.MalformedInput(f"the distinguished name {text!r} needs a CN")
    return name
