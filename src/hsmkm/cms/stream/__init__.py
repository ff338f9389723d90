"""S/MIME of any size in bounded memory: MIME I/O (``mime``), encryption and decryption
(``enveloped``), signing and verification (``signed``)."""

from __future__ import annotations

from hsmkm.cms.stream.enveloped import decrypt_stream, encrypt_stream
from hsmkm.cms.stream.mime import (
    CHUNK,
    Base64Reader,
    Base64Writer,
    Canonicalizer,
    HeadFilter,
    open_cms_stream,
)
from hsmkm.cms.stream.signed import MAX_CLEAR_SIGNED, sign_stream, verify_stream

__all__ = [
    "CHUNK",
    "MAX_CLEAR_SIGNED",
    "Base64Reader",
    "Base64Writer",
    "Canonicalizer",
    "HeadFilter",
    "decrypt_stream",
    "encrypt_stream",
    "open_cms_stream",
    "sign_stream",
    "verify_stream",
]
