"""The error hierarchy matches CLI.md's exit codes: each class's exit code is the one of the
branch it stands under."""

from __future__ import annotations

import inspect

import pytest

from hsmkm import errors

_ALL = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.HsmkmError)]


@pytest.mark.parametrize("cls", _ALL, ids=lambda c: c.__name__)
def test_exit_code_is_that_of_the_branch(cls: type[errors.HsmkmError]) -> None:
    if cls.exit_code is errors.ExitCode.NEGATIVE:
        assert issubclass(cls, errors.NegativeAnswer)
    elif cls.exit_code is errors.ExitCode.BAD_INPUT:
        assert issubclass(cls, errors.BadInput) or cls is errors.HsmkmError
    else:
        assert cls.exit_code is errors.ExitCode.UNREACHABLE
        assert issubclass(cls, (errors.TokenError, errors.Unreachable)) and not issubclass(cls, errors.BadInput)


def test_token_refusals_are_bad_input_and_still_token_errors() -> None:
    for cls in (errors.WrongPin, errors.PinLocked, errors.MechanismUnsupported, errors.KeyNotFound):
        assert issubclass(cls, errors.BadInput) and issubclass(cls, errors.TokenError)
        assert cls("x").exit_code is errors.ExitCode.BAD_INPUT
    assert errors.TokenNotFound("x").exit_code is errors.ExitCode.UNREACHABLE
