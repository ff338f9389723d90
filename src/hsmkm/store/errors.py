"""The store's errors, under hsmkm.errors; no driver exception leaves the store."""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

from hsmkm import errors


class Conflict(errors.AlreadyExists):
    """A write that clashes with a row already there (a unique key taken)."""


class DatabaseBusy(errors.Unreachable):
    """The database is locked by another writer past the busy timeout, or cannot be reached."""


class DatabaseDamaged(errors.MalformedInput):
    """The file is not a database, or its content is corrupt."""


class SchemaOutdated(errors.BadInput):
    """The database is at an older schema revision: ``hsmkm db upgrade`` brings it to head."""


class SchemaTooNew(errors.BadInput):
    """The database was made by a newer hsmkm (a revision this one does not know)."""


def translate(exc: BaseException) -> errors.HsmkmError | None:
    """The hsmkm error for a driver or SQLAlchemy exception, or None for any other."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(orig, sqlite3.IntegrityError):
        return Conflict(f"a conflicting row is already in the KM database ({orig})")
    if isinstance(orig, sqlite3.OperationalError):
        return DatabaseBusy(f"the KM database is unavailable ({orig})")
    if isinstance(orig, sqlite3.DatabaseError):
        return DatabaseDamaged(f"the KM database is damaged ({orig})")
    if isinstance(exc, sa_exc.IntegrityError):
        return Conflict(f"a conflicting row is already in the KM database ({exc.orig})")
    if isinstance(exc, sa_exc.OperationalError):
        return DatabaseBusy(f"the KM database is unavailable ({exc.orig})")
    if isinstance(exc, sa_exc.DBAPIError):
        return DatabaseDamaged(f"the KM database is damaged ({exc.orig})")
    return None


# What ``translate`` knows: the driver's and SQLAlchemy's database errors.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, sa_exc.DBAPIError)
