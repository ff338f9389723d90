"""Hot statements: built once, compiled once per dialect, run on the driver's cursor.

For a one-row statement SQLAlchemy's execution (cache lookup, parameter processing, result
set-up) costs more than SQLite's own work; an enrollment runs some thirty of them. A
``Prepared`` keeps the SQL text its construct compiles to and runs it on the driver
connection underneath the transaction's ``Connection``: the same connection, so the same
transaction (``Database.write``'s BEGIN IMMEDIATE), and driver errors are translated as for
every other statement (``store.errors.translate``). Bind and result processors of the
column types are applied as SQLAlchemy would (SQLite's dialect has none but the blob bind).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine.interfaces import DBAPICursor, Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from hsmkm.store import errors as store_errors

Processor = Callable[[Any], Any]


_GIVEN = object()  # a plan's mark for a parameter the caller gives


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...] | None  # the parameters in placeholder order (positional styles)
    fixed: Mapping[str, Any]  # values built into the construct (a LIMIT's, a literal's)
    binds: Mapping[str, Processor]  # bind processors by parameter name
    results: tuple[Processor | None, ...] | None  # result processors by column, if any

    @cached_property
    def _plan(self) -> tuple[tuple[str, Any, Processor | None], ...] | None:
        """Per placeholder: its name, its fixed value (or _GIVEN), its processor; None when
        every one is simply the caller's parameter."""
        if self.names is None or not (self.fixed or self.binds):
            return None
        return tuple((n, self.fixed.get(n, _GIVEN), self.binds.get(n)) for n in self.names)

    def args(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters: a tuple in placeholder order, or a mapping (named styles)."""
        if self.names is None:
            merged = {**self.fixed, **params}
            binds = self.binds
            return {k: (binds[k](v) if k in binds else v) for k, v in merged.items()}
        plan = self._plan
        if plan is None:
            return tuple([params[n] for n in self.names])
        out = []
        for name, value, proc in plan:
            if value is _GIVEN:
                value = params[name]
            out.append(value if proc is None else proc(value))
        return tuple(out)

    def row(self, row: Any) -> Any:
        if self.results is None:
            return row
        return tuple(v if p is None else p(v) for p, v in zip(self.results, row, strict=True))


def _dialect_key(dialect: Dialect) -> tuple[object, ...]:
    return (dialect.name, dialect.driver, dialect.paramstyle, getattr(dialect, "server_version_info", None))


def _translated(exc: BaseException) -> BaseException:
    translated = store_errors.translate(exc)
    return exc if translated is None else translated


def _cursor(conn: Connection) -> DBAPICursor:
    """A cursor on the driver connection underneath ``conn`` (in its transaction)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None  # a live Connection always has one
    return raw.cursor()


class Prepared:
    """A statement to run often: ``column_keys`` names the columns an INSERT or UPDATE
    without ``values()`` sets, as the parameters given to it would."""

    __slots__ = ("_by_dialect", "_column_keys", "_last", "_stmt")

    def __init__(self, stmt: Executable, column_keys: Sequence[str] | None = None) -> None:
        self._stmt = stmt
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._by_dialect: dict[tuple[object, ...], _Compiled] = {}
        self._last: tuple[Dialect, _Compiled] | None = None  # the dialect object seen last

    def _compiled(self, dialect: Dialect) -> _Compiled:
        last = self._last
        if last is not None and last[0] is dialect:
            return last[1]
        key = _dialect_key(dialect)
        found = self._by_dialect.get(key)
        if found is None:
            found = self._by_dialect[key] = self._compile(dialect)
        self._last = (dialect, found)
        return found

    def _compile(self, dialect: Dialect) -> _Compiled:
        assert isinstance(self._stmt, ClauseElement)
        compiled = self._stmt.compile(dialect=dialect, column_keys=self._column_keys)
        assert isinstance(compiled, SQLCompiler)
        fixed: dict[str, Any] = {}
        binds: dict[str, Processor] = {}
        for name, bp in compiled.binds.items():
            if bp.expanding or bp.callable is not None:
                raise TypeError(f"{name}: a Prepared statement takes no expanding or late-bound parameters")
            if not bp.required:
                fixed[name] = bp.value
            proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                binds[name] = proc
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        columns = getattr(self._stmt, "exported_columns", ())
        procs = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
        # Only the names the SQL text uses: a construct also lists its binds under internal keys.
        used = set(names) if names is not None else None
        return _Compiled(
            str(compiled),
            names,
            {k: v for k, v in fixed.items() if used is None or k in used},
            {k: v for k, v in binds.items() if used is None or k in used},
            procs if any(p is not None for p in procs) else None,
        )

    # --- running it -------------------------------------------------------------------------

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> DBAPICursor:
        """Run once; the driver's cursor, for its rows or rowcount."""
        c = self._compiled(conn.dialect)
        cursor = _cursor(conn)
        try:
            cursor.execute(c.sql, c.args(params or {}))
        except store_errors.DATABASE_ERRORS as exc:
            cursor.close()
            raise _translated(exc) from None
        return cursor

    def executemany(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> int:
        """Run once per parameter set (the driver's executemany); the rows it changed."""
        if not params:
            return 0
        c = self._compiled(conn.dialect)
        cursor = _cursor(conn)
        try:
            cursor.executemany(c.sql, [c.args(p) for p in params])
            return int(cursor.rowcount)
        except store_errors.DATABASE_ERRORS as exc:
            raise _translated(exc) from None
        finally:
            cursor.close()

    def fetchmany(self, conn: Connection, cursor: DBAPICursor, size: int) -> Sequence[Any]:
        """Up to ``size`` more rows of the cursor ``execute`` returned (none at the end): a
        long result streamed in batches."""
        try:
            rows = cursor.fetchmany(size)
        except store_errors.DATABASE_ERRORS as exc:
            raise _translated(exc) from None
        c = self._compiled(conn.dialect)
        return [c.row(r) for r in rows] if c.results is not None else rows

    def rowcount(self, conn: Connection, params: Mapping[str, Any] | None = None) -> int:
        """Run once; the rows it changed."""
        cursor = self.execute(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first row (a tuple), or None."""
        cursor = self.execute(conn, params)
        try:
            row = cursor.fetchone()
        except store_errors.DATABASE_ERRORS as exc:
            raise _translated(exc) from None
        finally:
            cursor.close()
        return None if row is None else self._compiled(conn.dialect).row(row)

    def scalar(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = self.first(conn, params)
        return None if row is None else row[0]

    def all(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Sequence[Any]:
        """Every row (tuples): for results of a few rows; a long one streams with ``execute``."""
        c = self._compiled(conn.dialect)
        cursor = self.execute(conn, params)
        try:
            rows = cursor.fetchall()
        except store_errors.DATABASE_ERRORS as exc:
            raise _translated(exc) from None
        finally:
            cursor.close()
        return [c.row(r) for r in rows] if c.results is not None else rows


def driver_sql(conn: Connection, sql: str) -> None:
    """A statement with no parameters and no rows (BEGIN, COMMIT) on the driver connection."""
    cursor = _cursor(conn)
    try:
        cursor.execute(sql)
    except store_errors.DATABASE_ERRORS as exc:
        raise _translated(exc) from None
    finally:
        cursor.close()
