"""Small private data objects (CKO_DATA) on a token, found by their CKA_APPLICATION, their
value kept in CKA_LABEL (the attribute SoftHSM2 lets a data object change after creation).

SoftHSM2 rewrites an object's whole file on each change (truncate, then write, without
fsync), so a kill at that moment leaves an object nobody can read: callers keep two or more
objects and never rewrite the only good one. A reader in another process may also catch a
file mid-write; that object is then missing from that one look only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pkcs11.exceptions as p11e
from pkcs11 import Attribute, ObjectClass

from hsmkm import errors
from hsmkm.keys.pkcs11.errmap import mapped_errors

if TYPE_CHECKING:
    from hsmkm.keys.pkcs11.session import TokenSession

_FIND_TRIES = 8


@dataclass(frozen=True)
class DataObject:
    """One object as read: its label and the handle to change or destroy it by."""

    label: str
    handle: Any


def create(ts: TokenSession, application: str, label: str) -> DataObject:
    """A new private token object of this application holding ``label``."""
    with ts.lock, mapped_errors(f"{ts.what()}: creating a data object"):
        obj = ts.session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.APPLICATION: application,
                Attribute.LABEL: label,
            }
        )
    return DataObject(label, obj)


def find(ts: TokenSession, application: str) -> list[DataObject]:
    """The objects of this application that can be read now."""
    template = {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: application}
    for attempt in range(_FIND_TRIES):
        out: list[DataObject] = []
        try:
            with ts.lock:
                # python-pkcs11 reads each found object's class while listing: one that another
                # process is rewriting fails there, and the whole search is made again.
                objs = list(ts.session.get_objects(template))
                for obj in objs:
                    try:
                        out.append(DataObject(str(obj[Attribute.LABEL]), obj))
                    except p11e.PKCS11Error:
                        continue  # being rewritten by another process, or destroyed meanwhile
            return out
        except (p11e.ObjectHandleInvalid, p11e.GeneralError):
            if attempt == _FIND_TRIES - 1:
                raise errors.TokenError(f"{ts.what()}: its data objects keep changing under the search") from None
            time.sleep(0.002 * (attempt + 1))
        except p11e.PKCS11Error as exc:
            with mapped_errors(f"{ts.what()}: finding data objects"):
                raise exc
    return []


def reread(ts: TokenSession, obj: DataObject) -> DataObject | None:
    """The object's label as it is now (another process may have changed it), or None if the
    object cannot be read (destroyed, or caught mid-write)."""
    with ts.lock:
        try:
            return DataObject(str(obj.handle[Attribute.LABEL]), obj.handle)
        except p11e.PKCS11Error:
            return None


def relabel(ts: TokenSession, obj: DataObject, label: str) -> DataObject:
    """Replace the object's label (one rewrite of its file)."""
    with ts.lock, mapped_errors(f"{ts.what()}: writing a data object"):
        obj.handle[Attribute.LABEL] = label
    return DataObject(label, obj.handle)


def destroy(ts: TokenSession, obj: DataObject) -> None:
    """Destroy one object; one already gone is no error."""
    with ts.lock:
        try:
            obj.handle.destroy()
        except (p11e.ObjectHandleInvalid, p11e.GeneralError):
            return
        except p11e.PKCS11Error as exc:
            with mapped_errors(f"{ts.what()}: destroying a data object"):
                raise exc
