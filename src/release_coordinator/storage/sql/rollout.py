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
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from release_coordinator.coordinator.models import utcnow
from release_coordinator.errors import ConcurrentUpdateError, ConflictError, NotFoundError
from release_coordinator.rollout.events import RolloutEvent
from release_coordinator.rollout.models import Child, ReleaseBundle, Rollout, RolloutState
from release_coordinator.rollout.policies import policy_json
from release_coordinator.storage.rollout_base import RolloutStore, last_of_each
from release_coordinator.storage.sql.child_state import _ChildRows
from release_coordinator.storage.sql.database import SQLDatabase
from release_coordinator.storage.sql.engine import _edge, _violates
from release_coordinator.storage.sql.lanes import Lane
from release_coordinator.storage.sql.poll import _PollPath
from release_coordinator.storage.sql.rollout_codec import _child, _dumps, _Fixed
from release_coordinator.storage.sql.rollout_rows import _chunks
from release_coordinator.storage.sql.schema import (
    _ROLLOUT_COLUMNS,
    child_tokens,
    children,
    counters,
    rollouts,
)
from release_coordinator.storage.sql.work_leases import _WorkLeases

__all__ = ["SQLRolloutStore"]

_SEQ_ATTEMPTS = 50


class SQLRolloutStore(_PollPath, _ChildRows, _WorkLeases, RolloutStore):
    """A :class:`~release_coordinator.storage.rollout_base.RolloutStore` in a SQL database (see
    the module documentation). Create it with :meth:`connect`, or :meth:`over` an open
    :class:`~release_coordinator.storage.sql.SQLStore` to share its engine.

    One part per job, over one :class:`~release_coordinator.storage.sql.database.SQLDatabase`:
    the poll path (:mod:`.poll`), the children's per-rollout state (:mod:`.child_state`), the
    event log (:mod:`.rollout_events`), and here rollouts, children and their tokens.
    """

    @classmethod
    async def connect(
        cls, url: str | URL, *, create: bool = True, flush_interval: float = 2.0
    ) -> SQLRolloutStore:
        """Open the database at ``url`` (as :meth:`SQLStore.connect` does: schema created when
        empty, SchemaError for another version)."""
        db = await SQLDatabase.connect(url, create=create)
        return cls(db, owns_db=True, flush_interval=flush_interval)

    @classmethod
    def over(cls, db: SQLDatabase, *, flush_interval: float = 2.0) -> SQLRolloutStore:
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

    # -- rollouts ------------------------------------------------------------------------------
    @_edge
    async def add_rollout(
        self, rollout: Rollout, bundle: ReleaseBundle, *, events: Sequence[RolloutEvent] = ()
    ) -> Rollout:
        for _attempt in range(_SEQ_ATTEMPTS):
            try:
                async with self._write(Lane.CONTROL) as conn:
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
                            after_release=stored.after_release or None,
                            strategy_text=bundle.strategy_text,
                            archive=bundle.archive.data,
                            archive_files=_dumps(list(bundle.archive.files)),
                            targets=0,
                            created_at=utcnow(),
                        )
                    )
                    await self._log(conn, events)
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
        async with self._read(Lane.CONTROL) as conn:
            return await self._rollout(conn, await self._rollout_row(conn, rollout_id))

    @_edge
    async def get_bundle(self, rollout_id: str) -> ReleaseBundle:
        return (await self._cached_fixed(rollout_id)).bundle

    @_edge
    async def list_rollouts(
        self, *, states: Collection[RolloutState] | None = None
    ) -> list[Rollout]:
        query = sa.select(*_ROLLOUT_COLUMNS).order_by(rollouts.c.priority.desc(), rollouts.c.seq)
        if states is not None:
            query = query.where(rollouts.c.state.in_([s.value for s in states]))
        async with self._read(Lane.CONTROL) as conn:
            return [await self._rollout(conn, row) for row in await conn.execute(query)]

    @_edge
    async def set_rollout_state(
        self,
        rollout_id: str,
        from_states: Collection[RolloutState],
        to_state: RolloutState,
        *,
        reason: str | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> Rollout:
        values: dict[str, Any] = {"state": to_state.value}
        if reason is not None:
            values["reason"] = reason
        async with self._write(Lane.CONTROL) as conn:
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
            await self._log(conn, events)
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
        async with self._read() as conn:
            row = (await conn.execute(sa.select(children).where(children.c.id == child_id))).first()
        if row is None:
            raise NotFoundError("child", child_id)
        return _child(row)

    @_edge
    async def get_children(self, child_ids: Iterable[str]) -> dict[str, Child]:
        ids = list(dict.fromkeys(child_ids))
        found: dict[str, Child] = {}
        async with self._read() as conn:
            for chunk in _chunks(ids):
                query = sa.select(children).where(children.c.id.in_(chunk))
                found.update((row.id, _child(row)) for row in await conn.execute(query))
        return found

    @_edge
    async def list_children(self) -> list[Child]:
        async with self._read() as conn:
            rows = (await conn.execute(sa.select(children).order_by(children.c.first_change))).all()
        return [_child(row) for row in rows]

    @_edge
    async def children_since(self, change: int) -> tuple[list[Child], int]:
        async with self._read() as conn:
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

    # -- child tokens ------------------------------------------------------------------------
    # (their writes do not change offers: the database's own transactions, not self._write)
    @_edge
    async def child_token(self, child_id: str) -> str | None:
        async with self._read() as conn:
            query = sa.select(child_tokens.c.digest).where(child_tokens.c.child_id == child_id)
            digest = (await conn.execute(query)).scalar()
        return None if digest is None else str(digest)

    @_edge
    async def add_child_token(self, child_id: str, digest: str) -> bool:
        async with self._db._write(Lane.FLEET) as conn:
            insert = self._insert(child_tokens).values(
                child_id=child_id, digest=digest, issued_at=utcnow()
            )
            result = await conn.execute(
                insert.on_conflict_do_nothing().returning(child_tokens.c.child_id)
            )
            return result.first() is not None

    @_edge
    async def drop_child_token(self, child_id: str) -> bool:
        async with self._db._write(Lane.FLEET) as conn:
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
        async with self._read() as conn:
            for chunk in _chunks(ids):
                query = sa.select(child_tokens.c.child_id).where(child_tokens.c.child_id.in_(chunk))
                found.update((await conn.execute(query)).scalars())
        return found
