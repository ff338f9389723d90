"""python-pkcs11's exceptions mapped onto hsmkm's typed errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pkcs11.exceptions as p11e

from hsmkm import errors


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn python-pkcs11 exceptions into hsmkm's typed errors (messages carry no secrets)."""
    try:
        yield
    except p11e.PinIncorrect:
        raise errors.WrongPin(f"{what}: wrong PIN") from None
    except p11e.PinLocked:
        raise errors.PinLocked(f"{what}: the PIN is locked") from None
    except (p11e.PinLenRange, p11e.PinInvalid):
        raise errors.WrongPin(f"{what}: PIN of invalid length or characters") from None
    except (p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.FunctionNotSupported):
        raise errors.MechanismUnsupported(f"{what}: mechanism not supported by the token") from None
    except (p11e.NoSuchToken, p11e.TokenNotPresent, p11e.SlotIDInvalid):
        raise errors.TokenNotFound(f"{what}: token not present") from None
    except (p11e.DeviceRemoved, p11e.DeviceError, p11e.GeneralError) as exc:
        raise errors.TokenError(f"{what}: token failure ({type(exc).__name__})") from None
    except p11e.EncryptedDataInvalid:
        raise errors.SignatureInvalid(f"{what}: ciphertext or tag does not verify") from None
    except p11e.PKCS11Error as exc:
        raise errors.TokenError(f"{what}: {type(exc).__name__}") from None
