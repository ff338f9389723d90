"""Opening the user's keystore from the command line: its PIN or password from its source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hsmkm.cli.context import CliContext
from hsmkm.keys import open_keystore
from hsmkm.keys.uri import Pkcs11Uri, is_pkcs11_uri

if TYPE_CHECKING:
    from hsmkm.keys import AnyKeystore  # a type alias of both backends (importing it loads them)


def keystore_secret(cli_ctx: CliContext, ref: str, password_source: str | None, confirm: bool = False) -> str:
    """The PIN (token: the URI's pin-source, else --pin-source) or the .epf password."""
    if is_pkcs11_uri(ref):
        uri = Pkcs11Uri.parse(ref)
        return cli_ctx.secret(
            uri.pin_source or cli_ctx.pin_source,
            f"PIN of token {uri.token or ''}".strip(),
        )
    return cli_ctx.secret(password_source, f"password of {ref}", confirm=confirm)


def open_user_keystore(cli_ctx: CliContext, ref: str, password_source: str | None) -> AnyKeystore:
    return open_keystore(ref, keystore_secret(cli_ctx, ref, password_source))
