"""Inputs on which the fuzzer once crashed a parser (an exception other than hsmkm's own):
each goes through its target again and must be refused, or accepted, cleanly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "fuzzing"
sys.path.insert(0, str(HERE))

import contextlib

import targets
from hsmkm import errors

CASES = sorted((HERE / "regressions").iterdir())


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_crash_input_is_handled(path: Path) -> None:
    target = targets.TARGETS[path.name.split("-", 1)[0]]
    with contextlib.suppress(errors.HsmkmError):
        target(path.read_bytes())


def test_every_target_has_a_name_the_files_use() -> None:
    assert CASES and {p.name.split("-", 1)[0] for p in CASES} <= set(targets.TARGETS)
