"""The poll path of the SQL rollout store: when children were last seen, and their first offers.

A poll asks the store two things: record that the child was seen, and the first rollout
waiting for it. The first is buffered (written in batches every ``flush_interval`` seconds,
one ``UPDATE`` per batch, and on ``flush``/``close``; ``last_seen`` merges the buffer in). The
second is answered by the database, but concurrent polls share a query: while one is in
flight, the children asking meanwhile are collected and answered by the next one, so a busy
server makes a few round trips for many polls and every answer is as fresh as the database.
On SQLite (one process) the answers are also kept in memory until a rollout store on the same
engine writes any rollout table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.rollout.models import RolloutState
from release_coordinator.storage.sql.database import SQLDatabase
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.lanes import Lane
from release_coordinator.storage.sql.rollout_codec import _DOING_INT, _TODO_INT
from release_coordinator.storage.sql.rollout_rows import _CHUNK, _RolloutRows
from release_coordinator.storage.sql.schema import child_releases, children, rollouts

#: The most children one batched offer query asks for.
_BATCH = 1000
_SEEN_POSTGRES = sa.text(
    "UPDATE rc_children AS c SET seen_at = v.at "
    "FROM unnest(CAST(:ids AS text[]), CAST(:ats AS float8[])) AS v(id, at) "
    "WHERE c.id = v.id AND (c.seen_at IS NULL OR c.seen_at < v.at)"
)

# SQLite (3.33+: UPDATE ... FROM): the batch as one JSON array of [id, time] pairs, read by
# json_each inside the database, instead of one statement execution per child.
_SEEN_SQLITE = sa.text(
    "UPDATE rc_children SET seen_at = v.at "
    "FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS at "
    "FROM json_each(:pairs)) AS v "
    "WHERE rc_children.id = v.id AND (rc_children.seen_at IS NULL OR rc_children.seen_at < v.at)"
)
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_SEEN_OLD_SQLITE = (  # one execution per child, before SQLite 3.33
    sa.update(children)
    .where(children.c.id == sa.bindparam("cid"))
    .where(sa.or_(children.c.seen_at.is_(None), children.c.seen_at < sa.bindparam("at")))
    .values(seen_at=sa.bindparam("at"))
)


class _OfferBatcher:
    """Answers ``first_offer`` for concurrent callers with shared queries: the children that
    ask while ``in_flight`` queries run are answered together by the next one."""

    def __init__(self, store: _PollPath, in_flight: int) -> None:
        self._store = store
        self._pending: dict[str, list[asyncio.Future[str]]] = {}
        self._runners = 0
        self._in_flight = in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, child_id: str) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(child_id, []).append(future)
        if self._runners < self._in_flight:
            self._runners += 1
            task = asyncio.get_running_loop().create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                ids = list(self._pending)[:_BATCH]
                waiters = {c: self._pending.pop(c) for c in ids}
                try:
                    offers = await self._store._offers_for(ids)
                except BaseException as error:
                    for futures in waiters.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                for child_id, futures in waiters.items():
                    offer = offers.get(child_id, "")
                    for future in futures:
                        if not future.done():
                            future.set_result(offer)
        finally:
            self._runners -= 1


class _PollPath(_RolloutRows):
    """The poll path's part of :class:`~release_coordinator.storage.sql.SQLRolloutStore`."""

    def __init__(self, db: SQLDatabase, *, owns_db: bool, flush_interval: float = 2.0) -> None:
        super().__init__(db, owns_db=owns_db)
        # Idle connections of the poll path, in autocommit mode, with their driver's.
        self._offer_conns: list[tuple[AsyncConnection, Any]] = []
        self._offers_statement = self._offers_query()
        self._offers_sql: tuple[str, Callable[[object], Any]] | None = None
        # SQLite has one process, and its writes of the rollout tables pass through
        # _write: first offers are kept (child id -> offer, "" for none) while none happens.
        self._cache_offers = not self.shared
        self._offer_cache: dict[str, str] = {}
        self._cached_at = -1
        self.flush_interval = flush_interval
        self._seen: dict[str, float] = {}  # polls not written yet
        self._flushing: dict[str, float] = {}  # polls being written
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush = time.monotonic()
        # Two queries at once on PostgreSQL: the database answers one while this process
        # prepares the next (SQLite reads through its pool as well).
        self._offers = _OfferBatcher(self, in_flight=2)

    # -- when children were last seen ----------------------------------------------------------
    async def touch_child(self, child_id: str, seen_at: float) -> None:
        if seen_at > self._seen.get(child_id, -1e300):
            self._seen[child_id] = seen_at
        if (
            self._flush_task is None
            and not self._closed
            and time.monotonic() - self._last_flush >= self.flush_interval
        ):
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        try:
            await self._write_seen()
        except Exception:  # kept for the next flush, which reports it
            pass
        finally:
            self._flush_task = None

    @_edge
    async def _write_seen(self) -> None:
        self._last_flush = time.monotonic()
        if not self._seen:
            return
        self._flushing, self._seen = self._seen, {}
        pairs = list(self._flushing.items())
        try:
            async with self._db._write(Lane.FLEET) as conn:  # (no offer changes: not self._write)
                for start in range(0, len(pairs), 5000):
                    chunk = pairs[start : start + 5000]
                    if self._postgres:  # one statement for the chunk: two arrays, unnested
                        ids, ats = zip(*chunk, strict=True)
                        await conn.execute(_SEEN_POSTGRES, {"ids": list(ids), "ats": list(ats)})
                    elif _SQLITE_UPDATE_FROM:  # [[id, time], ...]: the pairs as JSON arrays
                        await conn.execute(_SEEN_SQLITE, {"pairs": json.dumps(chunk)})
                    else:
                        rows = [{"cid": c, "at": at} for c, at in chunk]
                        await conn.execute(_SEEN_OLD_SQLITE, rows)
        except BaseException:
            for child_id, at in self._flushing.items():  # kept for the next flush
                if at > self._seen.get(child_id, -1e300):
                    self._seen[child_id] = at
            raise
        finally:
            self._flushing = {}

    async def flush(self) -> None:
        """Write the buffered polls now."""
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        await self._write_seen()

    @_edge
    async def last_seen(self, child_ids: Iterable[str]) -> dict[str, float]:
        wanted = list(dict.fromkeys(child_ids))
        # The buffers as they are now, before the read: a flush that commits meanwhile empties
        # them, but what it wrote was buffered here first.
        buffered: dict[str, float] = {}
        for buffer in (self._flushing, self._seen):
            for child_id, at in buffer.items():
                if at > buffered.get(child_id, -1e300):
                    buffered[child_id] = at
        query = sa.select(children.c.id, children.c.seen_at)
        if len(wanted) <= _CHUNK:  # (more are read as the whole table, in one statement)
            query = query.where(children.c.id.in_(wanted))
        async with self._read() as conn:
            rows = await conn.execute(query)
            stored = {r[0]: r[1] for r in rows.all()}
        seen: dict[str, float] = {}
        for child_id in wanted:
            if child_id not in stored:
                continue  # never saved
            at = max(stored[child_id] or -1e300, buffered.get(child_id, -1e300))
            if at > -1e300:
                seen[child_id] = at
        return seen

    # -- first offers --------------------------------------------------------------------------
    async def first_offer(self, child_id: str) -> str:
        if not self._cache_offers:
            return await self._offers.get(child_id)
        if self._cached_at != self._db.rollout_changes:
            self._offer_cache.clear()
            self._cached_at = self._db.rollout_changes
        offer = self._offer_cache.get(child_id)
        return await self._offers.get(child_id) if offer is None else offer

    def _offers_query(self) -> sa.Select[Any]:
        """The first-offer query for the children in the parameter ``ids`` (built once; see
        :meth:`_offers_ids`): one statement text for any number of children.

        The children's rows are found first, through their index, whatever the planner
        believes of the tables (a materialized CTE); the few rollouts are joined after."""
        if self._postgres:
            ids = sa.bindparam("ids", type_=pg_dialect.ARRAY(sa.String))
            wanted = child_releases.c.child_id == sa.any_(ids)
        else:  # a JSON array, its values by SQLite's json_each (through the index as well)
            listed = sa.func.json_each(sa.bindparam("ids", type_=sa.String)).table_valued("value")
            wanted = child_releases.c.child_id.in_(sa.select(listed.c.value))
        waiting = (
            sa.select(child_releases.c.child_id, child_releases.c.rollout_id)
            .where(
                wanted,
                sa.or_(
                    child_releases.c.status == _TODO_INT,
                    sa.and_(
                        child_releases.c.status == _DOING_INT,
                        child_releases.c.acknowledged.is_(False),
                    ),
                ),
            )
            .cte("waiting")
            .prefix_with("MATERIALIZED")
        )
        return (
            sa.select(waiting.c.child_id, waiting.c.rollout_id)
            .join(rollouts, rollouts.c.id == waiting.c.rollout_id)
            .where(rollouts.c.state == RolloutState.ACTIVE.value)
            .order_by(rollouts.c.priority.desc(), rollouts.c.seq)
        )

    def _offers_ids(self, child_ids: Sequence[str]) -> object:
        """The ``ids`` parameter of the first-offer query."""
        return list(child_ids) if self._postgres else json.dumps(list(child_ids))

    def _compile_offers(self) -> tuple[str, Callable[[object], Any]]:
        """The first-offer query as the driver's own SQL text, and how to make its
        parameters from the ``ids`` one."""
        compiled = self._offers_statement.compile(dialect=self._db._engine.dialect)
        fixed = {k: v for k, v in compiled.params.items() if k != "ids"}
        if self._postgres:  # psycopg: named %(name)s parameters
            return compiled.string, lambda ids: {**fixed, "ids": ids}
        order = compiled.positiontup or ()  # sqlite3: positional ? parameters
        return compiled.string, lambda ids: tuple(ids if k == "ids" else fixed[k] for k in order)

    @_edge
    async def _offers_for(self, child_ids: Sequence[str]) -> dict[str, str]:
        offers = await self._query_offers(child_ids)
        if self._cache_offers and self._cached_at == self._db.rollout_changes:
            # Nothing was written since the cache was last emptied, nor while the query ran.
            for child_id in child_ids:
                self._offer_cache[child_id] = offers.get(child_id, "")
        return offers

    async def _query_offers(self, child_ids: Sequence[str]) -> dict[str, str]:
        ids = self._offers_ids(child_ids)
        offers: dict[str, str] = {}
        if self._db._serial_reads:  # an in-memory SQLite database: its one connection
            async with self._read() as conn:
                rows: Sequence[Any] = (
                    await conn.execute(self._offers_statement, {"ids": ids})
                ).all()
        else:
            # The poll path keeps connections of its own in autocommit mode and runs its
            # query on the driver's connection: one round trip per batch (no pool check-out,
            # ping, BEGIN and COMMIT around it; on SQLite, one hop to the driver's thread
            # instead of four); each query reads what is committed when it runs (SQLite in
            # WAL mode, PostgreSQL).
            driver: Any
            if self._offer_conns:
                conn, driver = self._offer_conns.pop()
            else:
                conn = await self._db._engine.connect()
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                driver = (await conn.get_raw_connection()).driver_connection
                if self._postgres:
                    # No server-side prepared plan: a generic plan of "= ANY($1)" does not
                    # know how many children are asked and scans every row (measured: a
                    # batch took ~5 ms instead of well under one).
                    driver.prepare_threshold = None
            try:
                if self._offers_sql is None:
                    self._offers_sql = self._compile_offers()
                sql, parameters = self._offers_sql
                if self._postgres:
                    cursor = await driver.execute(sql, parameters(ids))
                    rows = await cursor.fetchall()
                else:
                    rows = await driver.execute_fetchall(sql, parameters(ids))
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
            if self._closed:
                await conn.close()
            else:
                self._offer_conns.append((conn, driver))
        for child_id, rollout_id in rows:
            offers.setdefault(child_id, rollout_id)
        return offers

    async def _drop_offer_connections(self) -> None:
        conns, self._offer_conns = self._offer_conns, []
        for conn, _driver in conns:
            with contextlib.suppress(Exception):
                await conn.close()
