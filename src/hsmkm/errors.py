"""One exception hierarchy for hsmkm; the CLI maps each class to a message and an exit code."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from enum import IntEnum

from cryptography import exceptions as crypto_exceptions
from cryptography import x509 as crypto_x509


class ExitCode(IntEnum):
    """Exit codes from CLI.md."""

    OK = 0
    NEGATIVE = 1  # the operation ran and its answer is no (bad signature, revoked, quorum not met)
    BAD_INPUT = 2  # bad usage or input: malformed file, wrong PIN or password, unknown user
    UNREACHABLE = 3  # the token or another component cannot be reached


class HsmkmError(Exception):
    """Base of every error hsmkm reports to a person. The message never holds a secret."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


# --- negative answers (exit 1) -------------------------------------------------------------


class NegativeAnswer(HsmkmError):
    exit_code = ExitCode.NEGATIVE


class SignatureInvalid(NegativeAnswer):
    """A signature, MAC or authentication tag does not verify."""


class Tampered(SignatureInvalid):
    """Stored data (an archive record, a share, a request) was altered."""


class CertificateRevoked(NegativeAnswer):
    """A certificate in question is revoked."""


class ValidationFailed(NegativeAnswer):
    """A chain, usage, validity or policy check failed."""


class QuorumNotMet(NegativeAnswer):
    """Fewer than K officer approvals."""


class AuditChainBroken(NegativeAnswer):
    """The audit log has been edited, truncated or reordered."""


# --- bad input (exit 2) --------------------------------------------------------------------


class BadInput(HsmkmError):
    exit_code = ExitCode.BAD_INPUT


class MalformedInput(BadInput):
    """A file or message that does not parse."""


class UnsupportedAlgorithm(BadInput):
    """An algorithm hsmkm does not implement."""


class SecretSourceError(BadInput):
    """A secret source that is malformed, literal, or cannot be read."""


class WrongPassword(BadInput):
    """A wrong keystore password."""


class NotFound(BadInput):
    """An unknown user, certificate, request, officer or object."""


class AlreadyExists(BadInput):
    """Something that must not be overwritten already exists."""


class CodeRejected(BadInput):
    """An enrollment code that is wrong, used, expired or out of attempts."""


class PolicyViolation(BadInput):
    """A request the KM's policy does not allow."""


# --- the token (PKCS#11) -----------------------------------------------------------------


class TokenError(HsmkmError):
    """Base of PKCS#11 errors: a token or module that cannot be reached (exit 3); what the
    token refuses because of what it was given is a TokenRefusal, bad input (exit 2)."""

    exit_code = ExitCode.UNREACHABLE


class ModuleNotFound(TokenError):
    """The PKCS#11 module cannot be loaded."""


class TokenNotFound(TokenError):
    """No token matches the label, serial, slot or URI."""


class TokenRefusal(TokenError, BadInput):
    """The token answered, and the answer is that the input was wrong (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class WrongPin(TokenRefusal):
    """The token refused the PIN."""


class PinLocked(TokenRefusal):
    """The PIN is locked after too many wrong tries."""


class MechanismUnsupported(TokenRefusal):
    """The token does not offer the mechanism asked for."""


class KeyNotFound(TokenRefusal):
    """No key object with that label or id on the token."""


class Unreachable(HsmkmError):
    """A component (not the token) cannot be reached."""

    exit_code = ExitCode.UNREACHABLE


class RandomSourceFailed(Unreachable):
    """Fresh random values kept colliding (serial numbers drawn again and again): the random
    source does not work, so nothing is issued."""


# --- parsing hostile input -----------------------------------------------------------------

# What asn1crypto, cryptography's loaders and the csv module raise on malformed input; asn1crypto
# parses lazily, so these can come from any access to a parsed value, not only from load().
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    csv.Error,
    crypto_x509.InvalidVersion,
    crypto_x509.DuplicateExtension,
    crypto_x509.UnsupportedGeneralNameType,
)
# cryptography's certificate parsing errors that are not ValueErrors (extensions parse lazily, at
# the first look, wherever that is)
CERTIFICATE_ERRORS: tuple[type[Exception], ...] = (
    crypto_x509.InvalidVersion,
    crypto_x509.DuplicateExtension,
    crypto_x509.UnsupportedGeneralNameType,
)
CERTIFICATE_PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, *CERTIFICATE_ERRORS)


@contextlib.contextmanager
def malformed(what: str) -> Iterator[None]:
    """Report a parser's own exceptions on hostile input as MalformedInput (or, for an algorithm
    cryptography does not know, UnsupportedAlgorithm); hsmkm's errors pass through."""
    try:
        yield
    except HsmkmError:
        raise
    except PARSE_ERRORS as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:120]
        raise MalformedInput(f"{what}: malformed ({type(exc).__name__}{': ' + detail if detail else ''})") from None
    except crypto_exceptions.UnsupportedAlgorithm:
        raise UnsupportedAlgorithm(f"{what}: unsupported algorithm") from None
