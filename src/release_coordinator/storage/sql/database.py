"""The database under both SQL stores: its engine, its transactions and its schema's version.

:class:`SQLDatabase` owns an engine: it opens the database (creating the schema in an empty
one, refusing one of another version), hands out the write and read transactions the stores
run in, and closes the engine. :class:`~release_coordinator.storage.sql.SQLStore` is one;
:class:`~release_coordinator.storage.sql.SQLRolloutStore` runs on one. :func:`upgrade` and
:func:`check` are ``release-coordinator db upgrade`` and ``db check``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from release_coordinator.errors import SchemaError
from release_coordinator.storage.sql.engine import (
    _edge,
    _in_memory,
    _make_engine,
    _shown,
    normalize_url,
)
from release_coordinator.storage.sql.lanes import Lane, LaneLock
from release_coordinator.storage.sql.schema import (
    _TABLES,
    MIGRATIONS,
    SCHEMA_VERSION,
    metadata,
    schema_version_table,
)

__all__ = ["SQLDatabase", "check", "upgrade"]

T = TypeVar("T")

#: Advisory lock key (PostgreSQL) of schema creation.
_SCHEMA_LOCK = 0x52435343  # "RCSC"


class SQLDatabase:
    """An engine with the transactions of the SQL stores and the schema's version.

    Create it with :meth:`connect`; :meth:`close` disposes of the engine. Every transaction
    runs in a :class:`~release_coordinator.storage.sql.lanes.Lane`; ``control_engine``, the
    control lane's connections (by default the fleet's ``engine``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        url: str | URL | None = None,
        control_engine: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        self._engines = {Lane.FLEET: engine, Lane.CONTROL: control_engine or engine}
        #: The database's URL as given (password hidden), for messages.
        self.url = _shown(engine.url if url is None else url)
        self.dialect = engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._postgres = self.dialect == "postgresql"
        # SQLite has one writer: this process's writers queue here rather than in the busy
        # handler, the control lane's first. An in-memory database has one connection, so its
        # readers queue too.
        self._write_lock = LaneLock()
        self._serial_reads = _in_memory(engine.url)
        self._closed = False
        #: Bumped before and after every write of the rollout tables by any SQLRolloutStore
        #: on this engine (their single-process SQLite offer caches compare it).
        self.rollout_changes = 0

    @classmethod
    async def connect(cls, url: str | URL, *, create: bool = True) -> Self:
        """Open the database at ``url`` and check its schema.

        With ``create`` (the default) an empty database gets a fresh schema. A schema of
        another version raises SchemaError (an older one names the upgrade command); a driver
        that cannot connect raises StorageError; an unusable URL, ConfigurationError.
        """
        url_ = normalize_url(url)
        # An in-memory SQLite database lives in its one connection: both lanes share it.
        control = None if _in_memory(url_) else _make_engine(url_, pool_size=2, max_overflow=3)
        store = cls(_make_engine(url_), url=url, control_engine=control)
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
        return f"{type(self).__name__}({self.url!r})"

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            for engine in set(self._engines.values()):
                await engine.dispose()

    # -- the database's clock (leases are timed by it, never by a process's) -----------------
    def _now(self) -> sa.ColumnElement[Any]:
        """The database's clock, in the lease column's terms."""
        if self._sqlite:
            return sa.func.julianday("now")
        return sa.func.now()

    def _expiry(self, lease_seconds: float) -> sa.ColumnElement[Any]:
        if self._sqlite:
            return sa.func.julianday("now") + sa.literal(lease_seconds / 86400.0, sa.Float())
        return sa.func.now() + sa.literal(timedelta(seconds=lease_seconds), sa.Interval())

    def _unleased(self, table: sa.Table, owner: str) -> sa.ColumnElement[bool]:
        """A row of ``table`` (its ``lease_owner`` and ``lease_expires_at``) that ``owner`` may
        lease: nobody's, ``owner``'s already, or one whose lease ran out (by the database's
        clock)."""
        return sa.or_(
            table.c.lease_owner.is_(None),
            table.c.lease_owner == owner,
            table.c.lease_expires_at <= self._now(),
        )

    async def _drop_lease(self, table: sa.Table, row_id: str, owner: str) -> None:
        """Give up ``owner``'s lease of the row ``row_id`` of ``table`` (none: nothing)."""
        async with self._write() as conn:
            await conn.execute(
                sa.update(table)
                .where(table.c.id == row_id, table.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    async def _claim(
        self,
        table: sa.Table,
        free: sa.ColumnElement[bool],
        owner: str,
        lease_seconds: float,
        limit: int,
        columns: Sequence[sa.ColumnElement[Any]],
    ) -> list[sa.Row[Any]]:
        """Lease to ``owner`` up to ``limit`` rows of ``table`` that ``free`` picks (its
        ``lease_owner`` and ``lease_expires_at``), lowest ``seq`` first, passing over the rows
        another transaction holds (``SELECT ... FOR UPDATE SKIP LOCKED``): their ``columns``
        (``seq`` among them), by ``seq``."""
        if limit <= 0:
            return []
        async with self._write() as conn:
            seqs = list(
                (
                    await conn.execute(
                        sa.select(table.c.seq)
                        .where(free)
                        .order_by(table.c.seq)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if not seqs:
                return []
            rows = await conn.execute(
                sa.update(table)
                .where(table.c.seq.in_(seqs))
                .values(lease_owner=owner, lease_expires_at=self._expiry(lease_seconds))
                .returning(*columns)
            )
            return sorted(rows, key=lambda row: int(row.seq))

    # -- transactions ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _write(self, lane: Lane = Lane.CONTROL) -> AsyncIterator[AsyncConnection]:
        lock = self._write_lock.hold(lane) if self._sqlite else contextlib.nullcontext()
        async with lock, self._engines[lane].connect() as conn:
            if self._sqlite:
                await conn.execution_options(rc_write=True)
            async with conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def _read(self, lane: Lane = Lane.CONTROL) -> AsyncIterator[AsyncConnection]:
        lock = self._write_lock.hold(lane) if self._serial_reads else contextlib.nullcontext()
        async with lock, self._engines[lane].connect() as conn, conn.begin():
            yield conn

    async def _one(self, conn: AsyncConnection, query: sa.Executable) -> sa.Row[Any] | None:
        return (await conn.execute(query)).first()

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
                    raise _no_schema(self.url)
                await _create_schema(conn)
                return
        _check_version(version, self.url)

    @_edge
    async def _upgrade(self) -> tuple[int | None, int]:
        async with self._write() as conn:
            await self._lock_schema(conn)
            before = await self._stored_version(conn)
            if before is None:
                await _create_schema(conn)
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
            raise _no_schema(self.url)
        _check_version(version, self.url)
        return version


async def _create_schema(conn: AsyncConnection) -> None:
    """A fresh schema of :data:`SCHEMA_VERSION` in an empty database."""
    await conn.run_sync(metadata.create_all)
    await conn.execute(sa.insert(schema_version_table).values(id=1, version=SCHEMA_VERSION))


def _no_schema(url: str) -> SchemaError:
    return SchemaError(
        f"{url} has no release_coordinator schema: create it with "
        f"`release-coordinator db upgrade --db {url}`",
        url=url,
    )


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
async def _with_database(url: str | URL, work: Callable[[SQLDatabase], Awaitable[T]]) -> T:
    database = SQLDatabase(_make_engine(normalize_url(url)), url=url)
    try:
        return await work(database)
    finally:
        await database.close()


async def upgrade(url: str | URL) -> tuple[int | None, int]:
    """Bring the schema at ``url`` to :data:`SCHEMA_VERSION` (``release-coordinator db upgrade``).

    Applies every step of :data:`MIGRATIONS` above the stored version, in order, each in its
    own transaction; an empty database gets a fresh schema. Returns ``(version before, version
    after)``, the first ``None`` for an empty database. SchemaError for a newer schema.
    """
    return await _with_database(url, SQLDatabase._upgrade)


async def check(url: str | URL) -> int:
    """The schema version at ``url`` if this library can use it (``release-coordinator db
    check``); SchemaError (missing, older, newer) or StorageError otherwise."""
    missing = _missing_file(normalize_url(url))
    if missing is not None:  # (opening it would create an empty one)
        raise SchemaError(f"{_shown(url)}: there is no database file {missing}", url=_shown(url))
    return await _with_database(url, SQLDatabase._check)


def _missing_file(url: URL) -> str | None:
    """The path of a SQLite database file that does not exist."""
    path = url.database
    if url.get_backend_name() != "sqlite" or _in_memory(url) or not path or url.query.get("uri"):
        return None
    return None if Path(path).exists() else path
