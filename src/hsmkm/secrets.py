"""Secret sources for PINs and passwords: ``env:NAME``, ``file:PATH`` or ``prompt``.

A literal secret is refused. Parsing happens here; reading the environment or a terminal
is done with what the caller (the CLI) passes in.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from hsmkm import errors
from hsmkm.bounded import MAX_SECRET, read_regular


class SourceKind(str, Enum):
    ENV = "env"
    FILE = "file"
    PROMPT = "prompt"


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from; never the secret itself."""

    kind: SourceKind
    ref: str = ""

    @classmethod
    def parse(cls, spec: str) -> SecretSource:
        if spec == "prompt":
            return cls(SourceKind.PROMPT)
        kind, sep, ref = spec.partition(":")
        if sep and kind == "env" and ref:
            return cls(SourceKind.ENV, ref)
        if sep and kind == "file" and ref:
            return cls(SourceKind.FILE, ref)
        # Do not echo the value: it may be the secret typed by mistake.
        raise errors.SecretSourceError(
            "a secret must come from env:NAME, file:PATH or prompt (literal secrets are refused)"
        )

    def __str__(self) -> str:
        return self.kind.value if self.kind is SourceKind.PROMPT else f"{self.kind.value}:{self.ref}"

    def read(
        self,
        environ: Mapping[str, str],
        prompt: Callable[[str], str] | None,
        what: str,
    ) -> str:
        """The secret. ``prompt`` is None when there is no terminal to ask on."""
        if self.kind is SourceKind.ENV:
            value = environ.get(self.ref)
            if value is None:
                raise errors.SecretSourceError(f"{what}: environment variable {self.ref} is not set")
            return value
        if self.kind is SourceKind.FILE:
            path = Path(self.ref)
            try:
                raw = read_regular(path, MAX_SECRET, what)
            except errors.HsmkmError as exc:
                raise errors.SecretSourceError(str(exc)) from None
            try:
                data = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise errors.SecretSourceError(f"{what}: {path} is not text (UTF-8)") from None
            value = data.rstrip("\r\n")
            if not value:
                raise errors.SecretSourceError(f"{what}: {path} is empty")
            if not value.isprintable():
                raise errors.SecretSourceError(f"{what}: {path} holds control characters (one line of text expected)")
            return value
        if prompt is None:
            raise errors.SecretSourceError(f"{what}: no terminal to prompt on; use env:NAME or file:PATH")
        return prompt(what)


def write_secret_file(path: Path, value: str) -> None:
    """Write a trial secret with mode 0600 (created so, never wider for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
        fh.flush()
        os.fsync(fh.fileno())
