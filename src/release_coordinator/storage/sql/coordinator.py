"""The SQL Coordinator store: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (psycopg 3).

::

    from release_coordinator.storage.sql import SQLStore

    store = await SQLStore.connect("sqlite:///release-coordinator.db")  # or postgresql://...
    async with Coordinator(store, transport) as coordinator:
        ...
    await store.close()

Needs the ``sql`` extra (SQLAlchemy and aiosqlite) or, for PostgreSQL, the ``postgres`` extra
(SQLAlchemy and psycopg). ``import release_coordinator`` never imports this module.

URLs: ``sqlite:///path.db`` and ``sqlite+aiosqlite:///path.db`` use aiosqlite;
``postgresql://...``, ``postgres://...`` and ``postgresql+psycopg://...`` use psycopg's async
connection. Every driver call is awaited: nothing blocks the event loop.

**Which database for what.**

- *SQLite* keeps a coordinator's state in one file across restarts (the demo's default). It is
  **single-process**: one process writes at a time (write transactions are ``BEGIN IMMEDIATE``
  behind one lock per store, in WAL mode with a busy timeout), so a second process over the
  same file waits for the first, and leases only hand releases over from a process that
  stopped. Run several coordinators on PostgreSQL.
- *PostgreSQL* is shared by several coordinator processes. Each unfinished release is driven
  by one of them at a time through a lease on its row, claimed with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` and timed by the database's clock (``now()``), so that
  the processes' clocks do not matter; when a process dies, another takes its releases over
  once the lease runs out.

**How the contract is kept.**

- Every state change is one compare-and-set, ``UPDATE ... WHERE id = :id AND state IN
  (:from_states) RETURNING ...``; a loser re-reads the row and gets ConcurrentUpdateError with
  the state that won. A state change and its events are written in one transaction.
- Versions are computed in the creating (or publishing) transaction from the highest stored
  version, and a UNIQUE constraint on ``(major, minor, patch)`` keeps them unique: a
  transaction that loses the race on it starts again, a bounded number of times.
- Event ids come from the database (an autoincrement key) and, on PostgreSQL, are taken under
  a transaction-level advisory lock held to the commit, so that ids become visible in the order
  they grow and following the log with ``after_id`` never skips a late commit.
- Timestamps are stored as UTC and come back as timezone-aware UTC datetimes.
- Every error of SQLAlchemy or of a driver is translated at the edge into
  :class:`~release_coordinator.errors.StorageError` (:class:`~release_coordinator.errors.
  SchemaError` for a missing or foreign schema); unique clashes the contract speaks of become
  :class:`~release_coordinator.errors.ConflictError`.

**Schema versions.** The schema carries its version in the one-row table
``rc_schema_version``. :meth:`SQLStore.connect` creates a fresh schema in an empty database
(``create=True``, the default) and refuses, with SchemaError, a schema of another version: an
older one is upgraded with ``release-coordinator db upgrade --db URL`` (:func:`upgrade`), which
applies the steps of :data:`MIGRATIONS` in order, each in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import attrs

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import URL, Connection, Dialect, make_url
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.storage.sql needs the sql extra: "
        "pip install 'release-coordinator[sql]' (or '[postgres]' for PostgreSQL)"
    ) from error

from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    HealthStatus,
    Release,
    ServiceHealth,
    Task,
    TaskService,
    utcnow,
)
from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ReleaseCoordinatorError,
    SchemaError,
    StorageError,
)
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.storage.base import (
    _ALL,
    CoordinatorStore,
    EventFilter,
    TaskChange,
    new_tasks,
)
from release_coordinator.versions import Version, next_release_version, published_version

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "SQLStore",
    "check",
    "normalize_url",
    "upgrade",
]

P = ParamSpec("P")
T = TypeVar("T")

_FINAL = tuple(
    s.value for s in (ReleaseState.PUBLISHED, ReleaseState.CANCELED, ReleaseState.FAILED)
)
#: How many times a creation (or publication) that lost the race for a version starts again.
_VERSION_ATTEMPTS = 50
#: Advisory lock keys (PostgreSQL): the event log's order, and schema creation.
_EVENT_LOCK = 0x52434556  # "RCEV"
_SCHEMA_LOCK = 0x52435343  # "RCSC"
_ID = sa.String(128)


# -- types ---------------------------------------------------------------------------------------
class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime: ``timestamptz`` on PostgreSQL, UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: records hold timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: Lease expiry by the database's clock: ``timestamptz`` on PostgreSQL, a julian day on SQLite
#: (whose ``CURRENT_TIMESTAMP`` has whole seconds only).
_LEASE_TIME = sa.DateTime(timezone=True).with_variant(sa.Float(), "sqlite")


# -- schema ----------------------------------------------------------------------------------------
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version_table = sa.Table(
    "rc_schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="one_row"),
)

services = sa.Table(
    "rc_services",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False, unique=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("health_status", sa.String(16), nullable=False),
    sa.Column("health_failures", sa.Integer, nullable=False),
    sa.Column("health_checked_at", UTCDateTime, nullable=True),
    sa.Column("health_error", sa.Text, nullable=False),
    sa.Column("health_name", sa.Text, nullable=False),
    sa.Column("health_version", sa.Text, nullable=False),
    sa.Column("health_message", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

releases = sa.Table(
    "rc_releases",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("major", sa.Integer, nullable=False),
    sa.Column("minor", sa.Integer, nullable=False),
    sa.Column("patch", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("studies", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("is_major", sa.Boolean, nullable=False),
    sa.Column("auto_publish", sa.Boolean, nullable=False),
    sa.Column("failure", sa.Text, nullable=False),
    sa.Column("cloned_from", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("state_changed_at", UTCDateTime, nullable=False),
    sa.Column("lease_owner", _ID, nullable=True),
    sa.Column("lease_expires_at", _LEASE_TIME, nullable=True),
    sa.UniqueConstraint("major", "minor", "patch", name="uq_rc_releases_version"),
    sa.Index("ix_rc_releases_state", "state"),
)

tasks = sa.Table(
    "rc_tasks",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("release_id", _ID, sa.ForeignKey("rc_releases.id"), nullable=False),
    # No foreign key: a service may be removed once the releases that used it are final.
    sa.Column("service_id", _ID, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("progress_at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_tasks_release", "release_id"),
    sa.Index("ix_rc_tasks_service", "service_id"),
)

events = sa.Table(
    "rc_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("release_id", _ID, nullable=True),
    sa.Column("task_id", _ID, nullable=True),
    sa.Column("task_service_id", _ID, nullable=True),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_events_release", "release_id"),
    sa.Index("ix_rc_events_task", "task_id"),
    sa.Index("ix_rc_events_service", "task_service_id"),
)

# The rollout half (schema version 2). Times of children and stages are the managers' clock
# (seconds; wall-clock time when several managers share the database).
counters = sa.Table(
    "rc_counters",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

rollouts = sa.Table(
    "rc_rollouts",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),  # GeoJSON
    sa.Column("match", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("policy", sa.Text, nullable=False),  # JSON (policy_json)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("gated", sa.Boolean, nullable=False),
    sa.Column("strategy_text", sa.Text, nullable=False),
    sa.Column("archive", sa.LargeBinary, nullable=False),
    sa.Column("archive_files", sa.Text, nullable=False),  # JSON list, as checked on upload
    sa.Column("targets", sa.BigInteger, nullable=False),  # how many targetings so far
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_rollouts_state", "state"),
)

# A Rollout's own columns, less those that never change (the rollout store decodes those
# once).
_ROLLOUT_COLUMNS: tuple[sa.Column[Any], ...] = (
    rollouts.c.id,
    rollouts.c.seq,
    rollouts.c.name,
    rollouts.c.match,
    rollouts.c.priority,
    rollouts.c.state,
    rollouts.c.reason,
    rollouts.c.gated,
)

children = sa.Table(
    "rc_children",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("area", sa.Text, nullable=False),  # GeoJSON
    sa.Column("number_of_children", sa.Integer, nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=True),
    sa.Column("first_change", sa.BigInteger, nullable=False),  # registration order
    sa.Column("change", sa.BigInteger, nullable=False),  # the last save's number
    sa.Index("ix_rc_children_change", "change"),
)

child_releases = sa.Table(
    "rc_child_releases",
    metadata,
    sa.Column("rollout_id", _ID, sa.ForeignKey("rc_rollouts.id"), primary_key=True),
    sa.Column("child_id", _ID, sa.ForeignKey("rc_children.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),  # targeting order within the rollout
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("acknowledged", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    # JSON of the stages; NULL while the child is Todo with every stage Pending.
    sa.Column("stages", sa.Text, nullable=True),
    # The stage statuses, "." joined in the strategy's order ("" while NULL stages): counted
    # with GROUP BY.
    sa.Column("statuses", sa.String(256), nullable=False),
    sa.Column("waiting_stage", sa.Text, nullable=False),  # the SuccessWaiting stage, or ""
    sa.Column("waiting_since", sa.Float, nullable=True),
    sa.Index("ix_rc_child_releases_child", "child_id"),
    sa.Index("ix_rc_child_releases_order", "rollout_id", "seq"),
)

barriers = sa.Table(
    "rc_barriers",
    metadata,
    sa.Column("rollout_id", _ID, sa.ForeignKey("rc_rollouts.id"), primary_key=True),
    sa.Column("stage", sa.String(256), primary_key=True),
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Column("waiting_since", sa.Float, nullable=True),
)

child_tokens = sa.Table(
    "rc_child_tokens",
    metadata,
    sa.Column("child_id", _ID, primary_key=True),
    sa.Column("digest", sa.String(128), nullable=False),  # of the token, never the token
    sa.Column("issued_at", UTCDateTime, nullable=False),
)

_TABLES = frozenset(metadata.tables)


# -- migrations ------------------------------------------------------------------------------------
@attrs.frozen
class Migration:
    """One step of the schema: from ``version - 1`` to ``version``.

    ``apply`` runs with a synchronous SQLAlchemy connection inside the step's transaction
    (through ``AsyncConnection.run_sync``); the version row is moved in the same transaction.
    """

    version: int
    description: str
    apply: Callable[[Connection], None]


def _to_v1(conn: Connection) -> None:
    """Version 0 is the layout without release leases (no ``lease_owner``/``lease_expires_at``
    on ``rc_releases``). No released version wrote it: it is the shape every later step takes."""
    inspector = sa.inspect(conn)
    present = {c["name"] for c in inspector.get_columns("rc_releases")}
    preparer = conn.dialect.identifier_preparer
    for column in (releases.c.lease_owner, releases.c.lease_expires_at):
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(
                f"ALTER TABLE {preparer.format_table(releases)} "
                f"ADD COLUMN {preparer.format_column(column)} {kind}"
            )
    # Any table a version-0 database lacks (of version 1: later steps add their own).
    for table in (schema_version_table, services, releases, tasks, events):
        table.create(conn, checkfirst=True)


def _to_v2(conn: Connection) -> None:
    """The rollout half's tables (children, rollouts, per-child state, barriers)."""
    for table in (counters, rollouts, children, child_releases, barriers):
        table.create(conn, checkfirst=True)


def _to_v3(conn: Connection) -> None:
    """The children's token digests (the HTTP layer's per-child credentials), kept with the
    children so that a restart or another process knows them."""
    child_tokens.create(conn, checkfirst=True)


#: Every step, in order; the last one's version is the schema this library writes.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "leases on releases", _to_v1),
    Migration(2, "the RolloutManager's tables", _to_v2),
    Migration(3, "the children's token digests", _to_v3),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


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


def _make_engine(url: URL) -> AsyncEngine:
    sqlite = url.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
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


# -- records ---------------------------------------------------------------------------------------
def _service(row: sa.Row[Any]) -> TaskService:
    return TaskService(
        id=row.id,
        name=row.name,
        url=row.url,
        enabled=bool(row.enabled),
        health=ServiceHealth(
            status=HealthStatus(row.health_status),
            consecutive_failures=row.health_failures,
            last_checked_at=row.health_checked_at,
            last_error=row.health_error,
            reported_name=row.health_name,
            reported_version=row.health_version,
            message=row.health_message,
        ),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _health_values(health: ServiceHealth) -> dict[str, Any]:
    return {
        "health_status": health.status.value,
        "health_failures": health.consecutive_failures,
        "health_checked_at": health.last_checked_at,
        "health_error": health.last_error,
        "health_name": health.reported_name,
        "health_version": health.reported_version,
        "health_message": health.message,
    }


def _release(row: sa.Row[Any]) -> Release:
    return Release(
        id=row.id,
        name=row.name,
        version=f"{row.major}.{row.minor}.{row.patch}",
        state=ReleaseState(row.state),
        description=row.description,
        studies=tuple(row.studies),
        tags=tuple(row.tags),
        author=row.author,
        is_major=bool(row.is_major),
        auto_publish=bool(row.auto_publish),
        failure=row.failure,
        cloned_from=row.cloned_from,
        created_at=row.created_at,
        updated_at=row.updated_at,
        state_changed_at=row.state_changed_at,
    )


def _task(row: sa.Row[Any]) -> Task:
    return Task(
        row.id,
        row.release_id,
        row.service_id,
        TaskState(row.state),
        row.progress,
        row.message,
        row.created_at,
        row.updated_at,
        row.progress_at,
    )


def _event(row: sa.Row[Any]) -> Event:
    return Event(
        EventType(row.type),
        EventKind(row.kind),
        row.message,
        row.release_id,
        row.task_id,
        row.task_service_id,
        row.state,
        row.at,
        row.id,
    )


def _event_values(event: Event) -> dict[str, Any]:
    return {
        "type": event.type.value,
        "kind": event.kind.value,
        "message": event.message,
        "release_id": event.release_id,
        "task_id": event.task_id,
        "task_service_id": event.task_service_id,
        "state": event.state,
        "at": event.at,
    }


_RELEASE_COLUMNS = [c for c in releases.c if c.name not in ("lease_owner", "lease_expires_at")]
_TASK_COLUMNS = list(tasks.c)


def _version_of(row: sa.Row[Any] | None) -> list[str]:
    return [] if row is None else [f"{row.major}.{row.minor}.{row.patch}"]


# -- the store -------------------------------------------------------------------------------------
class SQLStore(CoordinatorStore):
    """A :class:`CoordinatorStore` in a SQL database (see the module documentation).

    Create it with :meth:`connect`; :meth:`close` disposes of the engine.
    """

    def __init__(self, engine: AsyncEngine, *, url: str | URL | None = None) -> None:
        self._engine = engine
        #: The database's URL as given (password hidden), for messages.
        self.url = _shown(engine.url if url is None else url)
        self.dialect = engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._postgres = self.dialect == "postgresql"
        # SQLite has one writer: this process's writers queue here rather than in the busy
        # handler. An in-memory database has one connection, so its readers queue too.
        self._write_lock = asyncio.Lock()
        self._serial_reads = _in_memory(engine.url)
        self._closed = False
        #: Bumped before and after every write of the rollout tables by any SQLRolloutStore
        #: on this engine (their single-process SQLite offer caches compare it).
        self.rollout_changes = 0

    @classmethod
    async def connect(cls, url: str | URL, *, create: bool = True) -> SQLStore:
        """Open the database at ``url`` and check its schema.

        With ``create`` (the default) an empty database gets a fresh schema. A schema of
        another version raises SchemaError (an older one names the upgrade command); a driver
        that cannot connect raises StorageError; an unusable URL, ConfigurationError.
        """
        store = cls(_make_engine(normalize_url(url)), url=url)
        try:
            await store._prepare(create)
        except BaseException:
            await store.close()
            if store._sqlite:
                # aiosqlite stops the thread of a connection that failed to open without
                # awaiting it; let it finish while this loop still runs to receive its answer.
                await asyncio.sleep(0.05)
            raise
        return store

    def __repr__(self) -> str:
        return f"SQLStore({self.url!r})"

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._engine.dispose()

    # -- transactions ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        lock = self._write_lock if self._sqlite else contextlib.nullcontext()
        async with lock, self._engine.connect() as conn:
            if self._sqlite:
                await conn.execution_options(rc_write=True)
            async with conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        lock = self._write_lock if self._serial_reads else contextlib.nullcontext()
        async with lock, self._engine.connect() as conn, conn.begin():
            yield conn

    async def _one(self, conn: AsyncConnection, query: sa.Executable) -> sa.Row[Any] | None:
        return (await conn.execute(query)).first()

    async def _insert_events(
        self, conn: AsyncConnection, batch: Sequence[Event | None], *, ids: bool = False
    ) -> list[Event]:
        todo = [e for e in batch if e is not None]
        if not todo:
            return []
        if self._postgres:
            # Held to the commit: ids become visible in the order they grow.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_EVENT_LOCK)))
        rows = [_event_values(e) for e in todo]
        if not ids:
            await conn.execute(sa.insert(events), rows)
            return []
        result = await conn.execute(
            sa.insert(events).returning(events.c.id, sort_by_parameter_order=True), rows
        )
        return [attrs.evolve(e, id=i) for e, i in zip(todo, result.scalars(), strict=True)]

    # -- schema ------------------------------------------------------------------------------
    async def _stored_version(self, conn: AsyncConnection) -> int | None:
        """The schema version in the database; None when it holds none of our tables."""

        def tables(sync: Connection) -> set[str]:
            return set(sa.inspect(sync).get_table_names())

        present = (await conn.run_sync(tables)) & _TABLES
        if not present:
            return None
        if schema_version_table.name not in present:
            raise SchemaError(
                f"{self.url} holds release_coordinator tables ({', '.join(sorted(present))}) "
                "but no schema version: it was not created by release_coordinator, or is damaged"
            )
        version = (await conn.execute(sa.select(schema_version_table.c.version))).scalar()
        if version is None:
            raise SchemaError(f"{self.url} has an empty schema version table")
        return int(version)

    async def _lock_schema(self, conn: AsyncConnection) -> None:
        if self._postgres:
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))

    @_edge
    async def _prepare(self, create: bool) -> None:
        async with self._write() as conn:
            await self._lock_schema(conn)
            version = await self._stored_version(conn)
            if version is None:
                if not create:
                    raise SchemaError(
                        f"{self.url} has no release_coordinator schema: create it with "
                        f"`release-coordinator db upgrade --db {self.url}`",
                        url=self.url,
                    )
                await conn.run_sync(metadata.create_all)
                await conn.execute(
                    sa.insert(schema_version_table).values(id=1, version=SCHEMA_VERSION)
                )
                return
        _check_version(version, self.url)

    @_edge
    async def _upgrade(self) -> tuple[int | None, int]:
        async with self._write() as conn:
            await self._lock_schema(conn)
            before = await self._stored_version(conn)
            if before is None:
                await conn.run_sync(metadata.create_all)
                await conn.execute(
                    sa.insert(schema_version_table).values(id=1, version=SCHEMA_VERSION)
                )
                return None, SCHEMA_VERSION
        if before > SCHEMA_VERSION:
            _check_version(before, self.url)
        for step in MIGRATIONS:
            if step.version <= before:
                continue
            async with self._write() as conn:
                await self._lock_schema(conn)
                current = await self._stored_version(conn)
                if current is not None and current >= step.version:
                    continue  # another process got there first
                await conn.run_sync(step.apply)
                await conn.execute(sa.update(schema_version_table).values(version=step.version))
        return before, SCHEMA_VERSION

    @_edge
    async def _check(self) -> int:
        async with self._read() as conn:
            version = await self._stored_version(conn)
        if version is None:
            raise SchemaError(
                f"{self.url} has no release_coordinator schema: create it with "
                f"`release-coordinator db upgrade --db {self.url}`",
                url=self.url,
            )
        _check_version(version, self.url)
        return version

    # -- task services -----------------------------------------------------------------------
    async def _service_row(self, conn: AsyncConnection, service_id: str) -> sa.Row[Any]:
        row = await self._one(conn, sa.select(services).where(services.c.id == service_id))
        if row is None:
            raise NotFoundError("task service", service_id)
        return row

    async def _clash(self, conn: AsyncConnection, service_id: str, name: str, url: str) -> None:
        for column, value, what in ((services.c.name, name, "named"), (services.c.url, url, "at")):
            other = (
                await conn.execute(
                    sa.select(services.c.id).where(column == value, services.c.id != service_id)
                )
            ).scalar()
            if other is not None:
                raise ConflictError(f"a task service {what} {value!r} exists", id=other)

    @_edge
    async def add_service(self, service: TaskService, event: Event) -> TaskService:
        try:
            async with self._write() as conn:
                found = await self._one(
                    conn, sa.select(services.c.id).where(services.c.id == service.id)
                )
                if found is not None:
                    raise ConflictError(f"task service {service.id!r} exists", id=service.id)
                await self._clash(conn, service.id, service.name, service.url)
                await conn.execute(
                    sa.insert(services).values(
                        id=service.id,
                        name=service.name,
                        url=service.url,
                        enabled=service.enabled,
                        created_at=service.created_at,
                        updated_at=service.updated_at,
                        **_health_values(service.health),
                    )
                )
                await self._insert_events(conn, [event])
        except sa_exc.IntegrityError:  # a concurrent registration got there first
            raise ConflictError(
                f"a task service with the id {service.id!r}, the name {service.name!r} or the "
                f"url {service.url!r} exists",
                id=service.id,
            ) from None
        return service

    @_edge
    async def get_service(self, service_id: str) -> TaskService:
        async with self._read() as conn:
            return _service(await self._service_row(conn, service_id))

    @_edge
    async def list_services(self, *, enabled: bool | None = None) -> list[TaskService]:
        query = sa.select(services).order_by(services.c.seq)
        if enabled is not None:
            query = query.where(services.c.enabled == enabled)
        async with self._read() as conn:
            return [_service(row) for row in await conn.execute(query)]

    @_edge
    async def update_service(
        self,
        service_id: str,
        event: Event,
        *,
        name: str | None = None,
        url: str | None = None,
        enabled: bool | None = None,
    ) -> TaskService:
        try:
            async with self._write() as conn:
                current = _service(await self._service_row(conn, service_id))
                updated = attrs.evolve(
                    current,
                    name=current.name if name is None else name,
                    url=current.url if url is None else url,
                    enabled=current.enabled if enabled is None else enabled,
                    updated_at=utcnow(),
                )
                await self._clash(conn, service_id, updated.name, updated.url)
                await conn.execute(
                    sa.update(services)
                    .where(services.c.id == service_id)
                    .values(
                        name=updated.name,
                        url=updated.url,
                        enabled=updated.enabled,
                        updated_at=updated.updated_at,
                    )
                )
                await self._insert_events(conn, [event])
        except sa_exc.IntegrityError:
            raise ConflictError(
                f"another task service has the name {name!r} or the url {url!r}", id=service_id
            ) from None
        return updated

    @_edge
    async def record_health(
        self, service_id: str, health: ServiceHealth, event: Event | None = None
    ) -> TaskService:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(services)
                .where(services.c.id == service_id)
                .values(**_health_values(health))
                .returning(*services.c),
            )
            if row is None:
                raise NotFoundError("task service", service_id)
            await self._insert_events(conn, [event])
            return _service(row)

    @_edge
    async def remove_service(self, service_id: str, event: Event) -> None:
        async with self._write() as conn:
            # Lock the row: a release being created over this service (FOR SHARE) finishes
            # first, and its tasks are then seen below.
            row = await self._one(
                conn,
                sa.select(services.c.id).where(services.c.id == service_id).with_for_update(),
            )
            if row is None:
                raise NotFoundError("task service", service_id)
            busy = (
                await conn.execute(
                    sa.select(tasks.c.release_id)
                    .join(releases, releases.c.id == tasks.c.release_id)
                    .where(tasks.c.service_id == service_id, releases.c.state.not_in(_FINAL))
                    .order_by(tasks.c.seq)
                    .limit(1)
                )
            ).scalar()
            if busy is not None:
                raise ConflictError(
                    f"task service {service_id!r} has a task in unfinished release "
                    f"{busy!r}; disable it or finish the release first",
                    id=service_id,
                    release_id=busy,
                )
            await conn.execute(sa.delete(services).where(services.c.id == service_id))
            await self._insert_events(conn, [event])

    # -- releases ----------------------------------------------------------------------------
    async def _top_version(self, conn: AsyncConnection) -> sa.Row[Any] | None:
        return await self._one(
            conn,
            sa.select(releases.c.major, releases.c.minor, releases.c.patch)
            .order_by(releases.c.major.desc(), releases.c.minor.desc(), releases.c.patch.desc())
            .limit(1),
        )

    async def _release_row(self, conn: AsyncConnection, release_id: str) -> sa.Row[Any]:
        row = await self._one(conn, sa.select(*_RELEASE_COLUMNS).where(releases.c.id == release_id))
        if row is None:
            raise NotFoundError("release", release_id)
        return row

    async def _lost_release(
        self, conn: AsyncConnection, release_id: str, expected: Collection[ReleaseState]
    ) -> ConcurrentUpdateError:
        row = await self._release_row(conn, release_id)
        return ConcurrentUpdateError("release", release_id, expected, row.state)

    async def _retry_version(self, attempt: int, error: sa_exc.IntegrityError) -> None:
        """After losing the race for a version: wait a little, or give up."""
        if not _violates(error, "uq_rc_releases_version", "major", "minor", "patch"):
            raise error
        if attempt + 1 >= _VERSION_ATTEMPTS:
            raise StorageError(
                f"no unique release version after {_VERSION_ATTEMPTS} attempts; "
                "too many concurrent creations"
            ) from error
        await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))

    @_edge
    async def create_release(
        self, release: Release, service_ids: Sequence[str], event: Event
    ) -> tuple[Release, list[Task]]:
        for attempt in range(_VERSION_ATTEMPTS):
            try:
                return await self._create_release(release, service_ids, event)
            except sa_exc.IntegrityError as error:
                if _violates(error, "uq_rc_releases_id", "rc_releases.id"):
                    raise ConflictError(f"release {release.id!r} exists", id=release.id) from None
                await self._retry_version(attempt, error)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _create_release(
        self, release: Release, service_ids: Sequence[str], event: Event
    ) -> tuple[Release, list[Task]]:
        async with self._write() as conn:
            found = await self._one(
                conn, sa.select(releases.c.id).where(releases.c.id == release.id)
            )
            if found is not None:
                raise ConflictError(f"release {release.id!r} exists", id=release.id)
            if service_ids:
                # FOR SHARE: a concurrent remove_service waits for this release's tasks.
                known = set(
                    (
                        await conn.execute(
                            sa.select(services.c.id)
                            .where(services.c.id.in_(set(service_ids)))
                            .with_for_update(read=True)
                        )
                    ).scalars()
                )
                for service_id in service_ids:
                    if service_id not in known:
                        raise NotFoundError("task service", service_id)
            version = next_release_version(_version_of(await self._top_version(conn)))
            parsed = Version.parse(version)
            stored = attrs.evolve(release, version=version)
            await conn.execute(
                sa.insert(releases).values(
                    id=stored.id,
                    name=stored.name,
                    major=parsed.major,
                    minor=parsed.minor,
                    patch=parsed.patch,
                    state=stored.state.value,
                    description=stored.description,
                    studies=list(stored.studies),
                    tags=list(stored.tags),
                    author=stored.author,
                    is_major=stored.is_major,
                    auto_publish=stored.auto_publish,
                    failure=stored.failure,
                    cloned_from=stored.cloned_from,
                    created_at=stored.created_at,
                    updated_at=stored.updated_at,
                    state_changed_at=stored.state_changed_at,
                )
            )
            created = new_tasks(stored.id, service_ids)
            if created:
                await conn.execute(
                    sa.insert(tasks),
                    [
                        {
                            "id": t.id,
                            "release_id": t.release_id,
                            "service_id": t.service_id,
                            "state": t.state.value,
                            "progress": t.progress,
                            "message": t.message,
                            "created_at": t.created_at,
                            "updated_at": t.updated_at,
                            "progress_at": t.progress_at,
                        }
                        for t in created
                    ],
                )
            await self._insert_events(conn, [event])
            return stored, created

    @_edge
    async def get_release(self, release_id: str) -> Release:
        async with self._read() as conn:
            return _release(await self._release_row(conn, release_id))

    @_edge
    async def list_releases(
        self,
        *,
        states: Collection[ReleaseState] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Release]:
        query = sa.select(*_RELEASE_COLUMNS).order_by(releases.c.seq.desc())
        if states is not None:
            query = query.where(releases.c.state.in_([ReleaseState(s).value for s in states]))
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(max(0, limit))
        async with self._read() as conn:
            return [_release(row) for row in await conn.execute(query)]

    @_edge
    async def transition_release(
        self,
        release_id: str,
        from_states: Collection[ReleaseState],
        to_state: ReleaseState,
        event: Event,
        *,
        failure: str | None = None,
    ) -> Release:
        for attempt in range(_VERSION_ATTEMPTS):
            try:
                return await self._transition_release(
                    release_id, from_states, to_state, event, failure
                )
            except sa_exc.IntegrityError as error:
                await self._retry_version(attempt, error)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _transition_release(
        self,
        release_id: str,
        from_states: Collection[ReleaseState],
        to_state: ReleaseState,
        event: Event,
        failure: str | None,
    ) -> Release:
        async with self._write() as conn:
            now = utcnow()
            values: dict[str, Any] = {
                "state": to_state.value,
                "updated_at": now,
                "state_changed_at": now,
            }
            if failure is not None:
                values["failure"] = failure
            if to_state is ReleaseState.PUBLISHED:
                current = await self._release_row(conn, release_id)
                if current.state not in from_states:
                    raise await self._lost_release(conn, release_id, from_states)
                top = _version_of(await self._top_version(conn))
                promoted = Version.parse(published_version(top, major=bool(current.is_major)))
                values.update(major=promoted.major, minor=promoted.minor, patch=promoted.patch)
            row = await self._one(
                conn,
                sa.update(releases)
                .where(
                    releases.c.id == release_id,
                    releases.c.state.in_([ReleaseState(s).value for s in from_states]),
                )
                .values(**values)
                .returning(*_RELEASE_COLUMNS),
            )
            if row is None:
                raise await self._lost_release(conn, release_id, from_states)
            await self._insert_events(conn, [event])
            return _release(row)

    @_edge
    async def update_release(
        self,
        release_id: str,
        event: Event,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        expect_states: Collection[ReleaseState] | None = None,
    ) -> Release:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        if tags is not None:
            values["tags"] = list(tags)
        query = sa.update(releases).where(releases.c.id == release_id)
        if expect_states is not None:
            query = query.where(
                releases.c.state.in_([ReleaseState(s).value for s in expect_states])
            )
        async with self._write() as conn:
            row = await self._one(conn, query.values(**values).returning(*_RELEASE_COLUMNS))
            if row is None:
                current = await self._release_row(conn, release_id)  # NotFoundError
                raise ConcurrentUpdateError(
                    "release", release_id, expect_states or (), current.state
                )
            await self._insert_events(conn, [event])
            return _release(row)

    # -- tasks -------------------------------------------------------------------------------
    @_edge
    async def get_task(self, task_id: str) -> Task:
        async with self._read() as conn:
            row = await self._one(conn, sa.select(tasks).where(tasks.c.id == task_id))
        if row is None:
            raise NotFoundError("task", task_id)
        return _task(row)

    @_edge
    async def list_tasks(self, release_id: str) -> list[Task]:
        async with self._read() as conn:
            await self._release_row(conn, release_id)
            rows = await conn.execute(
                sa.select(tasks).where(tasks.c.release_id == release_id).order_by(tasks.c.seq)
            )
            return [_task(row) for row in rows]

    @_edge
    async def change_tasks(
        self, changes: Sequence[TaskChange]
    ) -> list[Task | ConcurrentUpdateError]:
        if not changes:
            return []
        async with self._write() as conn:
            # An unknown task raises NotFoundError out of the transaction: nothing is kept.
            now = utcnow()
            if len({c.task_id for c in changes}) == len(changes):
                results = await self._change_distinct_tasks(conn, changes, now)
            else:  # a task changed twice: in order, each change judged on the one before
                results = [await self._change_one_task(conn, c, now) for c in changes]
            await self._insert_events(
                conn,
                [e for c, r in zip(changes, results, strict=True) if r[1] for e in c.events],
            )
        return [outcome for outcome, _ in results]

    async def _change_distinct_tasks(
        self, conn: AsyncConnection, changes: Sequence[TaskChange], now: datetime
    ) -> list[tuple[Task | ConcurrentUpdateError, bool]]:
        """Changes on distinct tasks: one compare-and-set statement for all the changes of the
        same shape (a fan-out moves every task alike), then one read for the ones that did
        not change."""
        rows: list[sa.Row[Any] | None] = [None] * len(changes)
        shapes: dict[tuple[Any, ...], list[int]] = {}
        for i, c in enumerate(changes):
            if c.to_state is not None or c.progress is not None:
                shapes.setdefault((c.from_states, c.to_state, c.progress, c.message), []).append(i)
        for members in shapes.values():
            ids = [changes[i].task_id for i in members]
            changed = {
                row.id: row for row in await conn.execute(self._cas(changes[members[0]], ids, now))
            }
            for i in members:
                rows[i] = changed.get(changes[i].task_id)
        still = [c.task_id for c, row in zip(changes, rows, strict=True) if row is None]
        current = {}
        if still:
            query = sa.select(tasks).where(tasks.c.id.in_(still))
            current = {row.id: row for row in await conn.execute(query)}
        return [
            (_task(row), True) if row is not None else _judge(change, current.get(change.task_id))
            for change, row in zip(changes, rows, strict=True)
        ]

    async def _change_one_task(
        self, conn: AsyncConnection, change: TaskChange, now: datetime
    ) -> tuple[Task | ConcurrentUpdateError, bool]:
        if change.to_state is not None or change.progress is not None:
            row = await self._one(conn, self._cas(change, [change.task_id], now))
            if row is not None:
                return _task(row), True
        current = await self._one(conn, sa.select(tasks).where(tasks.c.id == change.task_id))
        return _judge(change, current)

    def _cas(self, change: TaskChange, ids: Sequence[str], now: datetime) -> sa.Executable:
        """``UPDATE tasks ... WHERE id IN (:ids) AND state IN (:from_states) RETURNING ...``
        for changes of one shape (the state or the progress moves)."""
        where: list[sa.ColumnElement[bool]] = [
            tasks.c.id.in_(ids),
            tasks.c.state.in_([s.value for s in change.from_states]),
        ]
        values: dict[str, Any] = {"updated_at": now}
        moves: list[sa.ColumnElement[bool]] = []
        if change.to_state is not None:
            values["state"] = change.to_state.value
            moves.append(tasks.c.state != change.to_state.value)
        if change.progress is not None:
            values["progress"] = change.progress
            moves.append(tasks.c.progress != change.progress)
            if change.to_state is None:  # a report of the stored figure changes nothing
                where.append(tasks.c.progress != change.progress)
        if change.message is not None:
            values["message"] = change.message
        # progress_at moves with the state or the progress (SET reads the old row)
        values["progress_at"] = sa.case(
            (sa.or_(*moves), sa.literal(now, UTCDateTime())), else_=tasks.c.progress_at
        )
        return sa.update(tasks).where(*where).values(**values).returning(*_TASK_COLUMNS)

    # -- events ------------------------------------------------------------------------------
    @_edge
    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        async with self._write() as conn:
            return await self._insert_events(conn, events, ids=True)

    @_edge
    async def last_event_id(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(sa.select(sa.func.max(events.c.id)))).scalar() or 0)

    @_edge
    async def list_events(
        self, filter: EventFilter = _ALL, *, limit: int | None = None, offset: int = 0
    ) -> list[Event]:
        query = sa.select(events).where(events.c.id > filter.after_id).order_by(events.c.id)
        for column, value in (
            (events.c.release_id, filter.release_id),
            (events.c.task_id, filter.task_id),
            (events.c.task_service_id, filter.task_service_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if filter.types is not None:
            query = query.where(events.c.type.in_([EventType(t).value for t in filter.types]))
        if filter.kinds is not None:
            query = query.where(events.c.kind.in_([EventKind(k).value for k in filter.kinds]))
        if filter.since is not None:
            query = query.where(events.c.at >= filter.since)
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(max(0, limit))
        async with self._read() as conn:
            return [_event(row) for row in await conn.execute(query)]

    # -- leases ------------------------------------------------------------------------------
    def _now(self) -> sa.ColumnElement[Any]:
        """The database's clock, in the lease column's terms."""
        if self._sqlite:
            return sa.func.julianday("now")
        return sa.func.now()

    def _expiry(self, lease_seconds: float) -> sa.ColumnElement[Any]:
        if self._sqlite:
            return sa.func.julianday("now") + sa.literal(lease_seconds / 86400.0, sa.Float())
        return sa.func.now() + sa.literal(timedelta(seconds=lease_seconds), sa.Interval())

    def _claimable(self, owner: str) -> sa.ColumnElement[bool]:
        return sa.and_(
            releases.c.state.not_in(_FINAL),
            sa.or_(
                releases.c.lease_owner.is_(None),
                releases.c.lease_owner == owner,
                releases.c.lease_expires_at <= self._now(),
            ),
        )

    @_edge
    async def claim_releases(
        self, owner: str, lease_seconds: float, *, limit: int = 100
    ) -> list[Release]:
        if limit <= 0:
            return []
        async with self._write() as conn:
            seqs = list(
                (
                    await conn.execute(
                        sa.select(releases.c.seq)
                        .where(self._claimable(owner))
                        .order_by(releases.c.seq)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if not seqs:
                return []
            rows = await conn.execute(
                sa.update(releases)
                .where(releases.c.seq.in_(seqs))
                .values(lease_owner=owner, lease_expires_at=self._expiry(lease_seconds))
                .returning(*_RELEASE_COLUMNS)
            )
            claimed = sorted(rows, key=lambda row: int(row.seq))
            return [_release(row) for row in claimed]

    @_edge
    async def claim_release(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(releases)
                .where(releases.c.id == release_id, self._claimable(owner))
                .values(lease_owner=owner, lease_expires_at=self._expiry(lease_seconds))
                .returning(releases.c.id),
            )
            if row is None:
                await self._release_row(conn, release_id)  # NotFoundError
                return False
            return True

    @_edge
    async def renew_lease(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(releases)
                .where(
                    releases.c.id == release_id,
                    releases.c.lease_owner == owner,
                    releases.c.state.not_in(_FINAL),
                )
                .values(lease_expires_at=self._expiry(lease_seconds))
                .returning(releases.c.id),
            )
            return row is not None

    @_edge
    async def drop_lease(self, release_id: str, owner: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                sa.update(releases)
                .where(releases.c.id == release_id, releases.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )


def _judge(
    change: TaskChange, current: sa.Row[Any] | None
) -> tuple[Task | ConcurrentUpdateError, bool]:
    """A change that wrote nothing: it lost, or it reported what is stored already."""
    if current is None:
        raise NotFoundError("task", change.task_id)
    if current.state in change.from_states:
        return _task(current), False
    return ConcurrentUpdateError("task", change.task_id, change.from_states, current.state), False


def _check_version(version: int, url: str) -> None:
    if version < SCHEMA_VERSION:
        raise SchemaError(
            f"{url} has schema version {version}, older than {SCHEMA_VERSION} which this "
            f"release_coordinator needs: run `release-coordinator db upgrade --db {url}`",
            url=url,
            version=version,
            expected=SCHEMA_VERSION,
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{url} has schema version {version}, newer than {SCHEMA_VERSION} which this "
            "release_coordinator speaks: upgrade release_coordinator",
            url=url,
            version=version,
            expected=SCHEMA_VERSION,
        )


# -- schema commands -------------------------------------------------------------------------------
async def _with_store(url: str | URL, work: Callable[[SQLStore], Awaitable[T]]) -> T:
    store = SQLStore(_make_engine(normalize_url(url)), url=url)
    try:
        return await work(store)
    finally:
        await store.close()


async def upgrade(url: str | URL) -> tuple[int | None, int]:
    """Bring the schema at ``url`` to :data:`SCHEMA_VERSION` (``release-coordinator db upgrade``).

    Applies every step of :data:`MIGRATIONS` above the stored version, in order, each in its
    own transaction; an empty database gets a fresh schema. Returns ``(version before, version
    after)``, the first ``None`` for an empty database. SchemaError for a newer schema.
    """
    return await _with_store(url, SQLStore._upgrade)


async def check(url: str | URL) -> int:
    """The schema version at ``url`` if this library can use it (``release-coordinator db
    check``); SchemaError (missing, older, newer) or StorageError otherwise."""
    missing = _missing_file(normalize_url(url))
    if missing is not None:  # (opening it would create an empty one)
        raise SchemaError(f"{_shown(url)}: there is no database file {missing}", url=_shown(url))
    return await _with_store(url, SQLStore._check)


def _missing_file(url: URL) -> str | None:
    """The path of a SQLite database file that does not exist."""
    path = url.database
    if url.get_backend_name() != "sqlite" or _in_memory(url) or not path or url.query.get("uri"):
        return None
    return None if Path(path).exists() else path
