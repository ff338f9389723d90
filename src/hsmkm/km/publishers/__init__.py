"""The one place an adapter chooses the KM's publisher."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from hsmkm import errors
from hsmkm.km.config import Home, KmConfig
from hsmkm.km.publisher import Publisher
from hsmkm.km.publishers.fanout import Elsewhere, FanOut
from hsmkm.km.publishers.files import FilePublisher

# Reads a secret from its source (``env:``, ``file:``): the command line supplies it.
SecretReader = Callable[[str, str], str]


def publisher_for(root: Path, secrets: SecretReader | None = None) -> Publisher:
    """The publisher of the KM home at ``root``: its files under ``pub/``, and the LDAP
    directory when one is configured (its bind password read through ``secrets`` when a bind
    needs it; without a reader, such as in a server's worker, the directory's rows wait for
    a process that has one: the server's drainer)."""
    home = Home(root)
    files = FilePublisher(home)
    try:
        config = KmConfig.load(home) if home.config.exists() else None
    except errors.HsmkmError:  # a damaged km.json is reported by the command that loads it
        config = None
    if config is None or config.ldap is None:
        return files
    from hsmkm.km.publishers.ldap import LdapPublisher

    spec = config.resolve_source(config.ldap.password_source)
    if spec is None:
        return FanOut(files, [LdapPublisher(config.ldap, None)])
    if secrets is None:
        return FanOut(files, [Elsewhere(config.ldap.url)])
    return FanOut(files, [LdapPublisher(config.ldap, partial(secrets, spec, "LDAP bind password"))])
