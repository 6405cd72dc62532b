"""Tasks in SQL: reads, and the batched compare-and-sets the fan-out records answers with.

Changes of the same shape (a fan-out moves every task alike) are one ``UPDATE ... WHERE id IN
(...) AND state IN (:from_states) RETURNING ...``; the tasks that did not change are then read
once, to tell the losers from the reports of what is stored already.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.coordinator.models import Task, utcnow
from release_coordinator.errors import ConcurrentUpdateError, NotFoundError
from release_coordinator.fsm.release import TaskState
from release_coordinator.storage.base import TaskChange
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.events import _EventLog
from release_coordinator.storage.sql.releases import _release_row
from release_coordinator.storage.sql.schema import _TASK_COLUMNS, UTCDateTime, tasks


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


def _judge(
    change: TaskChange, current: sa.Row[Any] | None
) -> tuple[Task | ConcurrentUpdateError, bool]:
    """A change that wrote nothing: it lost, or it reported what is stored already."""
    if current is None:
        raise NotFoundError("task", change.task_id)
    if current.state in change.from_states:
        return _task(current), False
    return ConcurrentUpdateError("task", change.task_id, change.from_states, current.state), False


class _Tasks(_EventLog):
    """The tasks' part of :class:`~release_coordinator.storage.sql.SQLStore`."""

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
            await _release_row(conn, release_id)
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
