"""The SQL RolloutManager store: the rollout half's state in SQLite or PostgreSQL.

::

    from release_coordinator.storage.sql import SQLRolloutStore

    store = await SQLRolloutStore.connect("postgresql://...")   # or sqlite:///path.db
    manager = RolloutManager(store)
    await manager.load()
    ...
    await store.close()

It shares the schema (and its version, and ``release-coordinator db upgrade``) with
:class:`~release_coordinator.storage.sql.SQLStore`; :meth:`SQLRolloutStore.over` puts both on
one engine (what ``release-coordinator serve`` does).

**The poll path.** A poll asks the store two things: record that the child was seen, and
the first rollout waiting for it. The first is buffered (written in batches every
``flush_interval`` seconds, one ``UPDATE`` per batch, and on :meth:`~SQLRolloutStore.flush`/
:meth:`~SQLRolloutStore.close`; :meth:`~SQLRolloutStore.last_seen` merges the buffer in). The
second is answered by the database, but concurrent polls share a query: while one is in
flight, the children asking meanwhile are collected and answered by the next one (``WHERE
child_id IN (...)``), so a busy server makes a few round trips for many polls and every answer
is as fresh as the database. On SQLite (one process) the answers are also kept in memory until
a rollout store on the same engine writes any rollout table.

**Several managers.** On PostgreSQL the store is :attr:`~SQLRolloutStore.shared`: several
RolloutManager processes may serve the same fleet. Every change of a child's state is a
compare-and-set on its row (``UPDATE ... WHERE`` the stored state is the one read), so two
processes taking results for one child never both win and the loser gets
ConcurrentUpdateError; targeting is idempotent (``ON CONFLICT DO NOTHING``); barriers are rows
that only ever open; the managers follow each other's registrations through a change number.
SQLite is single-process, as for the Coordinator's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.coordinator.models import utcnow
from release_coordinator.errors import ConcurrentUpdateError, ConflictError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.archive import FunctionArchive
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ChildStage,
    Outcome,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.rollout.policies import parse_policy, policy_json
from release_coordinator.rollout.results import StageSummary, TimesSummary
from release_coordinator.rollout.strategy import parse_strategy
from release_coordinator.storage.rollout_base import BarrierRecord, RolloutStore, last_of_each
from release_coordinator.storage.sql.coordinator import (
    _ROLLOUT_COLUMNS,
    SQLStore,
    _edge,
    _violates,
    barriers,
    child_releases,
    child_tokens,
    children,
    counters,
    rollouts,
)

__all__ = ["SQLRolloutStore"]

#: Rows per statement when a call names many children.
_CHUNK = 500
#: The most children one batched offer query asks for.
_BATCH = 1000
_OFFERED = (int(ReleaseStatus.TODO), int(ReleaseStatus.DOING))
_TODO_INT = int(ReleaseStatus.TODO)
_DOING_INT = int(ReleaseStatus.DOING)
_SEQ_ATTEMPTS = 50
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


# -- encodings -----------------------------------------------------------------------------------
def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _times(value: Sequence[float]) -> TimesSummary:
    return TimesSummary(value[0], value[1], value[2])


def _summary_json(summary: object) -> list[Any] | None:
    """A summary as JSON, canonical (floats as floats, counts as ints): equal summaries
    encode to the same text, which the compare-and-set relies on."""
    if summary is None:
        return None
    assert isinstance(summary, StageSummary)
    return [
        [float(t.median), float(t.minimum), float(t.maximum)]
        for t in (summary.proxy_times, summary.f1_times, summary.f2_times)
    ] + [
        float(summary.f1_err_rate),
        float(summary.f2_err_rate),
        int(summary.f1_calls),
        int(summary.f2_calls),
    ]


def _summary(value: list[Any] | None) -> StageSummary | None:
    if value is None:
        return None
    proxy, f1, f2, f1_err, f2_err, f1_calls, f2_calls = value
    return StageSummary(_times(proxy), _times(f1), _times(f2), f1_err, f2_err, f1_calls, f2_calls)


_PENDING = ChildStage()


def _encode_stages(state: ChildRelease, names: Sequence[str]) -> str | None:
    """The stages column, canonical (in the strategy's order ``names``, times as floats):
    NULL for a child that is Todo with every stage untouched."""
    if (
        state.status is ReleaseStatus.TODO
        and not state.acknowledged
        and state.outcome is Outcome.NONE
        and all(stage == _PENDING for stage in state.stages.values())
    ):
        return None
    order = [*names, *(n for n in state.stages if n not in names)]
    return _dumps(
        [
            [
                name,
                int(s.status),
                _summary_json(s.summary),
                float(s.changed_at),
                float(s.started_at),
            ]
            for name in order
            for s in (state.stages[name],)
        ]
    )


def _state_values(state: ChildRelease, names: Sequence[str]) -> dict[str, Any]:
    waiting_stage, waiting_since = "", None
    for name in names:
        stage = state.stages[name]
        if stage.status is StageStatus.SUCCESS_WAITING:
            waiting_stage, waiting_since = name, stage.changed_at
            break
    stages = _encode_stages(state, names)
    return {
        "status": int(state.status),
        "acknowledged": state.acknowledged,
        "outcome": state.outcome.value,
        "stages": stages,
        "statuses": ""
        if stages is None
        else ".".join(str(int(state.stages[n].status)) for n in names),
        "waiting_stage": waiting_stage,
        "waiting_since": waiting_since,
    }


def _child(row: sa.Row[Any]) -> Child:
    area = Area.from_geojson(json.loads(row.area), path=f"rc_children[{row.id}].area")
    return Child(row.id, area, row.number_of_children, row.registered_at)


@attrs.frozen
class _Fixed:
    """What never changes about a stored rollout (decoded once per process)."""

    target: Area
    policy: Any
    bundle: ReleaseBundle


class _OfferBatcher:
    """Answers ``first_offer`` for concurrent callers with shared queries: the children that
    ask while ``in_flight`` queries run are answered together by the next one."""

    def __init__(self, store: SQLRolloutStore, in_flight: int) -> None:
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


class SQLRolloutStore(RolloutStore):
    """A :class:`~release_coordinator.storage.base.RolloutStore` in a SQL database (see the
    module documentation). Create it with :meth:`connect`, or :meth:`over` an open
    :class:`~release_coordinator.storage.sql.SQLStore` to share its engine."""

    def __init__(self, db: SQLStore, *, owns_db: bool, flush_interval: float = 0.5) -> None:
        self._db = db
        self._owns_db = owns_db
        self.url = db.url
        self.shared = db.dialect == "postgresql"
        self._postgres = self.shared
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
        self._fixed: dict[str, _Fixed] = {}
        self._seen: dict[str, float] = {}  # polls not written yet
        self._flushing: dict[str, float] = {}  # polls being written
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush = time.monotonic()
        # Two queries at once on PostgreSQL: the database answers one while this process
        # prepares the next (SQLite reads through its pool as well).
        self._offers = _OfferBatcher(self, in_flight=2)
        self._closed = False

    @classmethod
    async def connect(
        cls, url: str | URL, *, create: bool = True, flush_interval: float = 0.5
    ) -> SQLRolloutStore:
        """Open the database at ``url`` (as :meth:`SQLStore.connect` does: schema created when
        empty, SchemaError for another version)."""
        db = await SQLStore.connect(url, create=create)
        return cls(db, owns_db=True, flush_interval=flush_interval)

    @classmethod
    def over(cls, db: SQLStore, *, flush_interval: float = 0.5) -> SQLRolloutStore:
        """A rollout store on ``db``'s engine and schema; closing it leaves ``db`` open."""
        return cls(db, owns_db=False, flush_interval=flush_interval)

    def __repr__(self) -> str:
        return f"SQLRolloutStore({self.url!r})"

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            await self._drop_offer_connections()
            if self._owns_db:
                await self._db.close()

    # -- helpers -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction of the rollout tables: the offers cached before it, or read
        while it runs, are forgotten."""
        self._db.rollout_changes += 1
        try:
            async with self._db._write() as conn:
                yield conn
        finally:
            self._db.rollout_changes += 1

    def _insert(self, table: sa.Table) -> Any:
        dialect = pg_dialect if self._db.dialect == "postgresql" else sqlite_dialect
        return dialect.insert(table)

    async def _next_counter(self, conn: AsyncConnection, name: str, count: int = 1) -> int:
        """Take the next ``count`` numbers of counter ``name`` (1 first); the last one taken.
        The row stays locked to the commit, so numbers become visible in the order they
        grow."""
        insert = self._insert(counters).values(name=name, value=count)
        value = (
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[counters.c.name], set_={"value": counters.c.value + count}
                ).returning(counters.c.value)
            )
        ).scalar_one()
        return int(value)

    async def _rollout_row(self, conn: AsyncConnection, rollout_id: str) -> Any:
        row = (
            await conn.execute(sa.select(*_ROLLOUT_COLUMNS).where(rollouts.c.id == rollout_id))
        ).first()
        if row is None:
            raise NotFoundError("release", rollout_id)
        return row

    async def _fixed_of(self, conn: AsyncConnection, rollout_id: str) -> _Fixed:
        fixed = self._fixed.get(rollout_id)
        if fixed is not None:
            return fixed
        row = (
            await conn.execute(
                sa.select(
                    rollouts.c.target,
                    rollouts.c.policy,
                    rollouts.c.strategy_text,
                    rollouts.c.archive,
                    rollouts.c.archive_files,
                ).where(rollouts.c.id == rollout_id)
            )
        ).first()
        if row is None:
            raise NotFoundError("release", rollout_id)
        data = bytes(row.archive)
        files = tuple(json.loads(row.archive_files))
        archive = FunctionArchive(
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            folders=frozenset(
                "/".join(name.split("/", 2)[:2]) for name in files if name.count("/") >= 2
            ),
            files=files,
        )
        text = row.strategy_text
        fixed = _Fixed(
            target=Area.from_geojson(json.loads(row.target), path=f"rc_rollouts[{rollout_id}]"),
            policy=parse_policy(json.loads(row.policy)),
            bundle=ReleaseBundle(parse_strategy(text), text, archive),
        )
        return self._fixed.setdefault(rollout_id, fixed)

    async def _rollout(self, conn: AsyncConnection, row: Any) -> Rollout:
        fixed = await self._fixed_of(conn, row.id)
        return Rollout(
            id=row.id,
            name=row.name,
            target=fixed.target,
            match=row.match,
            priority=row.priority,
            policy=fixed.policy,
            state=RolloutState(row.state),
            seq=row.seq,
            reason=row.reason,
            gated=row.gated,
        )

    def _child_release(
        self, rollout_id: str, child_id: str, row: sa.Row[Any], names: Sequence[str]
    ) -> ChildRelease:
        if row.stages is None:
            stages = {name: _PENDING for name in names}
        else:
            stages = {
                name: ChildStage(StageStatus(status), _summary(summary), changed, started)
                for name, status, summary, changed, started in json.loads(row.stages)
            }
        return ChildRelease(
            rollout_id,
            child_id,
            ReleaseStatus(row.status),
            stages,
            Outcome(row.outcome),
            row.acknowledged,
        )

    # -- rollouts ------------------------------------------------------------------------------
    @_edge
    async def add_rollout(self, rollout: Rollout, bundle: ReleaseBundle) -> Rollout:
        for _attempt in range(_SEQ_ATTEMPTS):
            try:
                async with self._write() as conn:
                    exists = await conn.execute(
                        sa.select(rollouts.c.id).where(rollouts.c.id == rollout.id)
                    )
                    if exists.first() is not None:
                        raise ConflictError(f"release {rollout.id!r} exists", id=rollout.id)
                    top = (await conn.execute(sa.select(sa.func.max(rollouts.c.seq)))).scalar()
                    stored = attrs.evolve(rollout, seq=int(top or 0) + 1)
                    await conn.execute(
                        sa.insert(rollouts).values(
                            id=stored.id,
                            seq=stored.seq,
                            name=stored.name,
                            target=_dumps(stored.target.to_geojson()),
                            match=stored.match,
                            priority=stored.priority,
                            policy=_dumps(policy_json(stored.policy)),
                            state=stored.state.value,
                            reason=stored.reason,
                            gated=stored.gated,
                            strategy_text=bundle.strategy_text,
                            archive=bundle.archive.data,
                            archive_files=_dumps(list(bundle.archive.files)),
                            targets=0,
                            created_at=utcnow(),
                        )
                    )
                    self._fixed[stored.id] = _Fixed(stored.target, stored.policy, bundle)
                    return stored
            except sa_exc.IntegrityError as error:
                if _violates(error, "pk_rc_rollouts", "rc_rollouts.id"):
                    raise ConflictError(f"release {rollout.id!r} exists", id=rollout.id) from None
                if not _violates(error, "uq_rc_rollouts_seq", "rc_rollouts.seq"):
                    raise
                await asyncio.sleep(0.001)  # another manager took the number: again
        raise ConflictError(f"could not number release {rollout.id!r}: too much contention")

    @_edge
    async def get_rollout(self, rollout_id: str) -> Rollout:
        async with self._db._read() as conn:
            return await self._rollout(conn, await self._rollout_row(conn, rollout_id))

    @_edge
    async def get_bundle(self, rollout_id: str) -> ReleaseBundle:
        fixed = self._fixed.get(rollout_id)
        if fixed is None:
            async with self._db._read() as conn:
                fixed = await self._fixed_of(conn, rollout_id)
        return fixed.bundle

    @_edge
    async def list_rollouts(
        self, *, states: Collection[RolloutState] | None = None
    ) -> list[Rollout]:
        query = sa.select(*_ROLLOUT_COLUMNS).order_by(rollouts.c.priority.desc(), rollouts.c.seq)
        if states is not None:
            query = query.where(rollouts.c.state.in_([s.value for s in states]))
        async with self._db._read() as conn:
            return [await self._rollout(conn, row) for row in await conn.execute(query)]

    @_edge
    async def set_rollout_state(
        self,
        rollout_id: str,
        from_states: Collection[RolloutState],
        to_state: RolloutState,
        *,
        reason: str | None = None,
    ) -> Rollout:
        values: dict[str, Any] = {"state": to_state.value}
        if reason is not None:
            values["reason"] = reason
        async with self._write() as conn:
            done = await conn.execute(
                sa.update(rollouts)
                .where(
                    rollouts.c.id == rollout_id,
                    rollouts.c.state.in_([s.value for s in from_states]),
                )
                .values(**values)
            )
            row = await self._rollout_row(conn, rollout_id)
            if done.rowcount != 1:
                raise ConcurrentUpdateError(
                    "rollout", rollout_id, from_states, RolloutState(row.state)
                )
            return await self._rollout(conn, row)

    # -- children ------------------------------------------------------------------------------
    @_edge
    async def save_child(self, child: Child) -> None:
        await self.save_children([child])

    @_edge
    async def save_children(self, children_: Sequence[Child]) -> None:
        children_ = last_of_each(children_)  # (one row per child in one statement)
        if not children_:
            return
        async with self._write() as conn:
            # Change numbers in order: the last one taken, and the ones before it.
            last = await self._next_counter(conn, "children", len(children_))
            first = last - len(children_) + 1
            insert = self._insert(children)
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[children.c.id],
                    set_={
                        "area": insert.excluded.area,
                        "number_of_children": insert.excluded.number_of_children,
                        "registered_at": insert.excluded.registered_at,
                        "change": insert.excluded.change,
                    },
                ),
                [
                    {
                        "id": child.id,
                        "area": _dumps(child.area.to_geojson()),
                        "number_of_children": child.number_of_children,
                        "registered_at": child.registered_at,
                        "first_change": first + i,
                        "change": first + i,
                    }
                    for i, child in enumerate(children_)
                ],
            )

    @_edge
    async def get_child(self, child_id: str) -> Child:
        async with self._db._read() as conn:
            row = (await conn.execute(sa.select(children).where(children.c.id == child_id))).first()
        if row is None:
            raise NotFoundError("child", child_id)
        return _child(row)

    @_edge
    async def get_children(self, child_ids: Iterable[str]) -> dict[str, Child]:
        ids = list(dict.fromkeys(child_ids))
        found: dict[str, Child] = {}
        async with self._db._read() as conn:
            for start in range(0, len(ids), _CHUNK):
                query = sa.select(children).where(children.c.id.in_(ids[start : start + _CHUNK]))
                found.update((row.id, _child(row)) for row in await conn.execute(query))
        return found

    @_edge
    async def list_children(self) -> list[Child]:
        async with self._db._read() as conn:
            rows = (await conn.execute(sa.select(children).order_by(children.c.first_change))).all()
        return [_child(row) for row in rows]

    @_edge
    async def children_since(self, change: int) -> tuple[list[Child], int]:
        async with self._db._read() as conn:
            rows = (
                await conn.execute(
                    sa.select(children)
                    .where(children.c.change > change)
                    .order_by(children.c.change)
                )
            ).all()
            if not rows:
                latest = (
                    await conn.execute(
                        sa.select(counters.c.value).where(counters.c.name == "children")
                    )
                ).scalar()
                return [], int(latest or 0)
        return [_child(row) for row in rows], int(rows[-1].change)

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
        rows = [{"cid": c, "at": at} for c, at in self._flushing.items()]
        statement = (
            sa.update(children)
            .where(children.c.id == sa.bindparam("cid"))
            .where(sa.or_(children.c.seen_at.is_(None), children.c.seen_at < sa.bindparam("at")))
            .values(seen_at=sa.bindparam("at"))
        )
        try:
            async with self._db._write() as conn:  # (no offer changes: not self._write)
                for start in range(0, len(rows), 5000):
                    chunk = rows[start : start + 5000]
                    if self._postgres:  # one statement for the chunk: two arrays, unnested
                        await conn.execute(
                            _SEEN_POSTGRES,
                            {"ids": [r["cid"] for r in chunk], "ats": [r["at"] for r in chunk]},
                        )
                    elif _SQLITE_UPDATE_FROM:
                        pairs = json.dumps([[r["cid"], r["at"]] for r in chunk])
                        await conn.execute(_SEEN_SQLITE, {"pairs": pairs})
                    else:
                        await conn.execute(statement, chunk)
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
        async with self._db._read() as conn:
            if len(wanted) > _CHUNK:
                rows = await conn.execute(sa.select(children.c.id, children.c.seen_at))
                stored = {r[0]: r[1] for r in rows.all()}
            else:
                rows = await conn.execute(
                    sa.select(children.c.id, children.c.seen_at).where(children.c.id.in_(wanted))
                )
                stored = {r[0]: r[1] for r in rows.all()}
        seen: dict[str, float] = {}
        for child_id in wanted:
            if child_id not in stored:
                continue  # never saved
            at = max(stored[child_id] or -1e300, buffered.get(child_id, -1e300))
            if at > -1e300:
                seen[child_id] = at
        return seen

    # -- targeting and offers ------------------------------------------------------------------
    @_edge
    async def target(self, rollout_id: str, child_ids: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(child_ids))
        added: list[str] = []
        numbered = False  # (the rollout's row was found by the numbering's UPDATE)
        async with self._write() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                # Registered children of the chunk, with their record of this rollout if any.
                found = await conn.execute(
                    sa.select(children.c.id, child_releases.c.child_id)
                    .select_from(
                        children.outerjoin(
                            child_releases,
                            sa.and_(
                                child_releases.c.child_id == children.c.id,
                                child_releases.c.rollout_id == rollout_id,
                            ),
                        )
                    )
                    .where(children.c.id.in_(chunk))
                )
                free = {known for known, taken in found if taken is None}
                new = [c for c in chunk if c in free]
                if not new:
                    continue
                # Numbers for the targeting order; the rollout's row stays locked to the commit.
                top = (
                    await conn.execute(
                        sa.update(rollouts)
                        .where(rollouts.c.id == rollout_id)
                        .values(targets=rollouts.c.targets + len(new))
                        .returning(rollouts.c.targets)
                    )
                ).scalar()
                if top is None:
                    raise NotFoundError("release", rollout_id)
                numbered = True
                first = int(top) - len(new) + 1
                insert = self._insert(child_releases).on_conflict_do_nothing()
                rows = [
                    {
                        "rollout_id": rollout_id,
                        "child_id": c,
                        "seq": first + i,
                        "status": _TODO_INT,
                        "acknowledged": False,
                        "outcome": "",
                        "stages": None,
                        "statuses": "",
                        "waiting_stage": "",
                        "waiting_since": None,
                    }
                    for i, c in enumerate(new)
                ]
                # A concurrent manager may have targeted some meanwhile (read committed): the
                # rows this call made are the ones its INSERT returns.
                mine = set(
                    (
                        await conn.execute(insert.returning(child_releases.c.child_id), rows)
                    ).scalars()
                )
                added.extend(c for c in new if c in mine)
            if not numbered:
                await self._rollout_row(conn, rollout_id)  # NotFoundError
        return added

    @_edge
    async def withdraw(self, rollout_id: str, child_ids: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(child_ids))
        removed: set[str] = set()
        async with self._write() as conn:
            await self._rollout_row(conn, rollout_id)
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                result = await conn.execute(
                    sa.delete(child_releases)
                    .where(
                        child_releases.c.rollout_id == rollout_id,
                        child_releases.c.child_id.in_(chunk),
                        child_releases.c.status == _TODO_INT,
                    )
                    .returning(child_releases.c.child_id)
                )
                removed.update(result.scalars())
        return [c for c in wanted if c in removed]

    @_edge
    async def targeted(self, rollout_id: str) -> list[str]:
        async with self._db._read() as conn:
            await self._rollout_row(conn, rollout_id)
            result = await conn.execute(
                sa.select(child_releases.c.child_id)
                .where(child_releases.c.rollout_id == rollout_id)
                .order_by(child_releases.c.seq)
            )
            return list(result.scalars())

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
            async with self._db._read() as conn:
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

    # -- per-child state -----------------------------------------------------------------------
    async def _names(self, conn: AsyncConnection, rollout_id: str) -> tuple[str, ...]:
        return (await self._fixed_of(conn, rollout_id)).bundle.strategy.stage_names

    @_edge
    async def child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        async with self._db._read() as conn:
            names = await self._names(conn, rollout_id)
            row = (
                await conn.execute(
                    sa.select(child_releases).where(
                        child_releases.c.rollout_id == rollout_id,
                        child_releases.c.child_id == child_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFoundError("release for child", f"{rollout_id}/{child_id}")
        return self._child_release(rollout_id, child_id, row, names)

    @_edge
    async def child_releases(self, rollout_id: str) -> list[ChildRelease]:
        async with self._db._read() as conn:
            await self._rollout_row(conn, rollout_id)
            names = await self._names(conn, rollout_id)
            rows = (
                await conn.execute(
                    sa.select(child_releases)
                    .where(child_releases.c.rollout_id == rollout_id)
                    .order_by(child_releases.c.seq)
                )
            ).all()
        return [self._child_release(rollout_id, row.child_id, row, names) for row in rows]

    @_edge
    async def put_child_release(self, expected: ChildRelease, new: ChildRelease) -> ChildRelease:
        fixed = self._fixed.get(expected.rollout_id)
        if fixed is None:
            async with self._db._read() as conn:
                stage_names = await self._names(conn, expected.rollout_id)
        else:
            stage_names = fixed.bundle.strategy.stage_names
        old = _state_values(expected, stage_names)
        where = [
            child_releases.c.rollout_id == expected.rollout_id,
            child_releases.c.child_id == expected.child_id,
            child_releases.c.status == old["status"],
            child_releases.c.acknowledged.is_(old["acknowledged"]),
            child_releases.c.outcome == old["outcome"],
            child_releases.c.stages.is_(None)
            if old["stages"] is None
            else child_releases.c.stages == old["stages"],
        ]
        async with self._write() as conn:
            done = await conn.execute(
                sa.update(child_releases).where(*where).values(**_state_values(new, stage_names))
            )
            if done.rowcount == 1:
                return new
            names = await self._names(conn, expected.rollout_id)
            row = (
                await conn.execute(
                    sa.select(child_releases).where(
                        child_releases.c.rollout_id == expected.rollout_id,
                        child_releases.c.child_id == expected.child_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFoundError("release for child", f"{expected.rollout_id}/{expected.child_id}")
        current = self._child_release(expected.rollout_id, expected.child_id, row, names)
        raise ConcurrentUpdateError(
            "child release",
            f"{expected.rollout_id}/{expected.child_id}",
            [expected.status.wire_name],
            current.status.wire_name,
        )

    # -- counts, barriers ----------------------------------------------------------------------
    @_edge
    async def status_counts(
        self, rollout_id: str
    ) -> dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int]:
        async with self._db._read() as conn:
            await self._rollout_row(conn, rollout_id)
            names = await self._names(conn, rollout_id)
            rows = await conn.execute(
                sa.select(child_releases.c.status, child_releases.c.statuses, sa.func.count())
                .where(child_releases.c.rollout_id == rollout_id)
                .group_by(child_releases.c.status, child_releases.c.statuses)
            )
            found = rows.all()
        pending = tuple(StageStatus.PENDING for _ in names)
        counts: dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int] = {}
        for status, statuses, count in found:
            stages = (
                tuple(StageStatus(int(s)) for s in statuses.split(".")) if statuses else pending
            )
            key = (ReleaseStatus(status), stages)
            counts[key] = counts.get(key, 0) + int(count)
        return counts

    @_edge
    async def waiting(self, rollout_id: str, stage_name: str) -> list[str]:
        async with self._db._read() as conn:
            await self._rollout_row(conn, rollout_id)
            result = await conn.execute(
                sa.select(child_releases.c.child_id)
                .where(
                    child_releases.c.rollout_id == rollout_id,
                    child_releases.c.waiting_stage == stage_name,
                )
                .order_by(child_releases.c.waiting_since, child_releases.c.child_id)
            )
            return list(result.scalars())

    @_edge
    async def barrier(self, rollout_id: str, stage_name: str) -> BarrierRecord:
        async with self._db._read() as conn:
            row = (
                await conn.execute(
                    sa.select(barriers.c.open, barriers.c.waiting_since).where(
                        barriers.c.rollout_id == rollout_id, barriers.c.stage == stage_name
                    )
                )
            ).first()
            if row is None:
                await self._rollout_row(conn, rollout_id)  # NotFoundError
                return BarrierRecord()
        return BarrierRecord(bool(row.open), row.waiting_since)

    @_edge
    async def mark_barrier(
        self,
        rollout_id: str,
        stage_name: str,
        *,
        open: bool = False,
        waiting_since: float | None = None,
    ) -> BarrierRecord:
        async with self._write() as conn:
            await self._rollout_row(conn, rollout_id)
            insert = self._insert(barriers).values(
                rollout_id=rollout_id, stage=stage_name, open=open, waiting_since=waiting_since
            )
            row = (
                await conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=[barriers.c.rollout_id, barriers.c.stage],
                        set_={
                            "open": sa.or_(barriers.c.open, insert.excluded.open),
                            "waiting_since": sa.func.coalesce(
                                barriers.c.waiting_since, insert.excluded.waiting_since
                            ),
                        },
                    ).returning(barriers.c.open, barriers.c.waiting_since)
                )
            ).one()
        return BarrierRecord(bool(row.open), row.waiting_since)

    # -- child tokens ------------------------------------------------------------------------
    # (their writes do not change offers: the database's own transactions, not self._write)
    @_edge
    async def child_token(self, child_id: str) -> str | None:
        async with self._db._read() as conn:
            query = sa.select(child_tokens.c.digest).where(child_tokens.c.child_id == child_id)
            digest = (await conn.execute(query)).scalar()
        return None if digest is None else str(digest)

    @_edge
    async def add_child_token(self, child_id: str, digest: str) -> bool:
        async with self._db._write() as conn:
            insert = self._insert(child_tokens).values(
                child_id=child_id, digest=digest, issued_at=utcnow()
            )
            result = await conn.execute(
                insert.on_conflict_do_nothing().returning(child_tokens.c.child_id)
            )
            return result.first() is not None

    @_edge
    async def drop_child_token(self, child_id: str) -> bool:
        async with self._db._write() as conn:
            result = await conn.execute(
                sa.delete(child_tokens)
                .where(child_tokens.c.child_id == child_id)
                .returning(child_tokens.c.child_id)
            )
            return result.first() is not None

    @_edge
    async def children_with_tokens(self, child_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(child_ids))
        found: set[str] = set()
        async with self._db._read() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                query = sa.select(child_tokens.c.child_id).where(child_tokens.c.child_id.in_(chunk))
                found.update((await conn.execute(query)).scalars())
        return found
