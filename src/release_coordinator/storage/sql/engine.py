"""Database URLs, engines and errors, for both SQL stores.

:func:`normalize_url` picks the async driver (aiosqlite or psycopg); :func:`_make_engine`
opens an engine, on SQLite with the pragmas and the ``BEGIN``/``BEGIN IMMEDIATE`` the stores'
transactions rely on. :func:`_edge` translates, at a store method's edge, every error of
SQLAlchemy or of a driver into :class:`~release_coordinator.errors.StorageError` (or
:class:`~release_coordinator.errors.SchemaError` for a missing schema); :func:`_violates`
tells which unique constraint an insert ran into.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from release_coordinator.errors import (
    ConfigurationError,
    ReleaseCoordinatorError,
    SchemaError,
    StorageError,
)

__all__ = ["normalize_url"]

P = ParamSpec("P")
T = TypeVar("T")


# -- URLs and engines ------------------------------------------------------------------------------
def normalize_url(url: str | URL) -> URL:
    """The async-driver form of a database URL (aiosqlite or psycopg); ConfigurationError for
    anything else."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigurationError(f"not a database URL: {url!r}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg", "psycopg_async"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigurationError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: use "
        "sqlite:///PATH (the sql extra) or postgresql://... (the postgres extra)"
    )


def _shown(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return str(url)


def _in_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _make_engine(url: URL, **pool: int) -> AsyncEngine:
    """An engine of ``url``; ``pool``: its pool's size (``pool_size``, ``max_overflow``)."""
    sqlite = url.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = dict(pool)
    if not sqlite:
        kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in url.query:
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = create_async_engine(url, **kwargs)
    except (ImportError, sa_exc.NoSuchModuleError) as error:
        extra = "sql" if sqlite else "postgres"
        raise ConfigurationError(
            f"the driver for {url.drivername} is not installed: "
            f"pip install 'release-coordinator[{extra}]' ({error})"
        ) from None
    except (sa_exc.ArgumentError, ValueError, TypeError) as error:
        raise ConfigurationError(f"cannot use database URL: {error}") from None
    if sqlite:
        sa.event.listen(engine.sync_engine, "connect", _sqlite_connect)
        sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not BEGIN on its own (it would not for SELECTs, nor BEGIN IMMEDIATE):
    # _sqlite_begin does it, so that every transaction is a real one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in (
            "PRAGMA busy_timeout = 10000",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
        ):
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock at BEGIN: it waits (busy timeout) rather than failing
    # later when a read transaction would need to become a write transaction.
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return  # every statement on its own (the poll path's reads)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("rc_write", False) else "BEGIN")


# -- errors ----------------------------------------------------------------------------------------
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (sa_exc.SQLAlchemyError, sqlite3.Error, OSError)
try:  # psycopg errors normally arrive wrapped by SQLAlchemy; a bare one is translated too
    import psycopg as _psycopg

    _DRIVER_ERRORS += (_psycopg.Error,)
except ImportError:  # pragma: no cover - depends on the installed extras
    pass


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return (text.splitlines() or [type(error).__name__])[0]


def _translate(error: BaseException, doing: str) -> StorageError:
    orig = getattr(error, "orig", None)
    driver = type(orig if orig is not None else error).__name__
    text = _first_line(error)
    lowered = text.lower()
    if isinstance(error, sa_exc.ProgrammingError | sa_exc.OperationalError) and (
        "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered)
    ):
        return SchemaError(
            f"{doing}: the release_coordinator schema is missing ({text})", driver=driver
        )
    return StorageError(f"{doing} failed: {text}", driver=driver)


_DOING = {
    "prepare": "opening the database",
    "upgrade": "upgrading the schema",
    "check": "checking the schema",
}


def _edge(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Translate driver errors raised by a store method into StorageError."""

    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except ReleaseCoordinatorError:
            raise
        except _DRIVER_ERRORS as error:
            name = method.__name__.lstrip("_")
            doing = _DOING.get(name, name.replace("_", " "))
            where = getattr(args[0], "url", "") if args else ""
            raise _translate(error, f"{doing} ({where})" if where else doing) from error

    return translated


def _violates(error: sa_exc.IntegrityError, constraint: str, *columns: str) -> bool:
    """Whether a unique violation is on ``constraint`` (PostgreSQL names it; SQLite names
    the columns)."""
    diag = getattr(error.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name is not None:
        return bool(name == constraint)
    text = str(error.orig)
    return all(c in text for c in columns)
