"""The one place an adapter chooses the KM's publisher."""

from __future__ import annotations

from pathlib import Path

from hsmkm.km.config import Home
from hsmkm.km.publisher import Publisher
from hsmkm.km.publishers.files import FilePublisher


def publisher_for(root: Path) -> Publisher:
    """The publisher of the KM home at ``root``: today its files under ``pub/``."""
    return FilePublisher(Home(root))
