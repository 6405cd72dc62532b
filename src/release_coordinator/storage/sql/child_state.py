"""Children's state for rollouts in SQL: targeting, per-child records, counts and barriers.

Every change of a child's state is a compare-and-set on its row (``UPDATE ... WHERE`` the
stored state is the one read), so two processes taking results for one child never both win;
targeting is idempotent (``ON CONFLICT DO NOTHING``) and numbered in the rollout's row;
barriers are rows that only ever open.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.errors import ConcurrentUpdateError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.events import RolloutEvent
from release_coordinator.rollout.models import ChildRelease
from release_coordinator.storage.rollout_base import BarrierRecord
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.rollout_codec import (
    _TODO_INT,
    _child_release,
    _state_values,
)
from release_coordinator.storage.sql.rollout_events import _RolloutEventLog
from release_coordinator.storage.sql.rollout_rows import _chunks
from release_coordinator.storage.sql.schema import barriers, child_releases, children, rollouts


async def _child_release_row(
    conn: AsyncConnection, rollout_id: str, child_id: str
) -> sa.Row[Any] | None:
    """The child's row for the rollout, if it was targeted."""
    query = sa.select(child_releases).where(
        child_releases.c.rollout_id == rollout_id, child_releases.c.child_id == child_id
    )
    return (await conn.execute(query)).first()


class _ChildRows(_RolloutEventLog):
    """The per-child part of :class:`~release_coordinator.storage.sql.SQLRolloutStore`."""

    # -- targeting -----------------------------------------------------------------------------
    @_edge
    async def target(
        self,
        rollout_id: str,
        child_ids: Iterable[str],
        *,
        event: RolloutEvent | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> list[str]:
        wanted = list(dict.fromkeys(child_ids))
        added: list[str] = []
        numbered = False  # (the rollout's row was found by the numbering's UPDATE)
        async with self._write() as conn:
            for chunk in _chunks(wanted):
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
            if added:
                await self._log(conn, events, each=event, children=added)
        return added

    @_edge
    async def withdraw(
        self, rollout_id: str, child_ids: Iterable[str], *, event: RolloutEvent | None = None
    ) -> list[str]:
        wanted = list(dict.fromkeys(child_ids))
        removed: set[str] = set()
        async with self._write() as conn:
            await self._rollout_row(conn, rollout_id)
            for chunk in _chunks(wanted):
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
            gone = [c for c in wanted if c in removed]
            await self._log(conn, each=event, children=gone)
        return gone

    @_edge
    async def targeted(self, rollout_id: str) -> list[str]:
        async with self._read() as conn:
            await self._rollout_row(conn, rollout_id)
            result = await conn.execute(
                sa.select(child_releases.c.child_id)
                .where(child_releases.c.rollout_id == rollout_id)
                .order_by(child_releases.c.seq)
            )
            return list(result.scalars())

    # -- per-child state -----------------------------------------------------------------------
    @_edge
    async def child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        async with self._read() as conn:
            names = await self._names(conn, rollout_id)
            row = await _child_release_row(conn, rollout_id, child_id)
        if row is None:
            raise NotFoundError("release for child", f"{rollout_id}/{child_id}")
        return _child_release(rollout_id, child_id, row, names)

    @_edge
    async def child_releases(self, rollout_id: str) -> list[ChildRelease]:
        async with self._read() as conn:
            await self._rollout_row(conn, rollout_id)
            names = await self._names(conn, rollout_id)
            rows = (
                await conn.execute(
                    sa.select(child_releases)
                    .where(child_releases.c.rollout_id == rollout_id)
                    .order_by(child_releases.c.seq)
                )
            ).all()
        return [_child_release(rollout_id, row.child_id, row, names) for row in rows]

    @_edge
    async def put_child_release(
        self, expected: ChildRelease, new: ChildRelease, *, events: Sequence[RolloutEvent] = ()
    ) -> ChildRelease:
        stage_names = (await self._cached_fixed(expected.rollout_id)).bundle.strategy.stage_names
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
                await self._log(conn, events)
                return new
            names = await self._names(conn, expected.rollout_id)
            row = await _child_release_row(conn, expected.rollout_id, expected.child_id)
        if row is None:
            raise NotFoundError("release for child", f"{expected.rollout_id}/{expected.child_id}")
        current = _child_release(expected.rollout_id, expected.child_id, row, names)
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
        async with self._read() as conn:
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
        async with self._read() as conn:
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
        async with self._read() as conn:
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

    async def _opens(self, conn: AsyncConnection, rollout_id: str, stage_name: str) -> bool:
        """Open the barrier in ``conn``'s transaction: True if it was closed (or had no row),
        False if it was open already. Of several transactions opening it at once, one gets
        True: the row's update waits for the other's commit and then finds it open, and of
        two inserts of a new row one wins."""
        key = (barriers.c.rollout_id == rollout_id, barriers.c.stage == stage_name)
        opened = await conn.execute(
            sa.update(barriers).where(*key, barriers.c.open.is_(False)).values(open=True)
        )
        if opened.rowcount == 1:
            return True
        inserted = await conn.execute(
            self._insert(barriers)
            .values(rollout_id=rollout_id, stage=stage_name, open=True, waiting_since=None)
            .on_conflict_do_nothing()
            .returning(barriers.c.stage)
        )
        if inserted.first() is not None:
            return True
        # There is a row (open, or a racing insert's closed one, committed meanwhile).
        again = await conn.execute(
            sa.update(barriers).where(*key, barriers.c.open.is_(False)).values(open=True)
        )
        return again.rowcount == 1

    @_edge
    async def mark_barrier(
        self,
        rollout_id: str,
        stage_name: str,
        *,
        open: bool = False,
        waiting_since: float | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> BarrierRecord:
        async with self._write() as conn:
            await self._rollout_row(conn, rollout_id)
            opened = bool(open and events) and await self._opens(conn, rollout_id, stage_name)
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
            if opened:  # (last: the log's lock is held to the commit)
                await self._log(conn, events)
        return BarrierRecord(bool(row.open), row.waiting_since)
