"""The rollout event log in SQL: events written in the transactions of the changes they
record, and read.

Ids come from the database (an autoincrement key, ``rc_rollout_events.id``); on PostgreSQL
they are taken under a transaction-level advisory lock held to the commit (as for the
Coordinator's log, with a key of its own), so that ids become visible in the order they grow
and following the log with ``after_id`` never skips a late commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.coordinator.models import EventType
from release_coordinator.rollout.events import (
    ALL_EVENTS,
    RolloutEvent,
    RolloutEventFilter,
    RolloutEventKind,
)
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.events import _log_query, _page
from release_coordinator.storage.sql.lanes import Lane
from release_coordinator.storage.sql.rollout_rows import _RolloutRows
from release_coordinator.storage.sql.schema import rollout_events

#: Advisory lock key (PostgreSQL) of the rollout event log's order.
_ROLLOUT_EVENT_LOCK = 0x52435245  # "RCRE"


def _event(row: sa.Row[Any]) -> RolloutEvent:
    return RolloutEvent(
        EventType(row.type),
        RolloutEventKind(row.kind),
        row.message,
        row.rollout_id,
        row.child_id,
        row.stage,
        row.state,
        row.actor,
        row.at,
        row.id,
    )


def _values(event: RolloutEvent, child_id: str | None = None) -> dict[str, Any]:
    return {
        "type": event.type.value,
        "kind": event.kind.value,
        "message": event.message,
        "rollout_id": event.rollout_id,
        "child_id": event.child_id if child_id is None else child_id,
        "stage": event.stage,
        "state": event.state,
        "actor": event.actor,
        "at": event.at,
    }


class _RolloutEventLog(_RolloutRows):
    """The event log's part of :class:`~release_coordinator.storage.sql.SQLRolloutStore`, and
    the event writing the other parts do in their own transactions."""

    async def _log(
        self,
        conn: AsyncConnection,
        events: Sequence[RolloutEvent] = (),
        *,
        each: RolloutEvent | None = None,
        children: Iterable[str] = (),
        ids: bool = False,
    ) -> list[RolloutEvent]:
        """Insert ``each`` once per child of ``children``, then ``events``, in ``conn``'s
        transaction; with ``ids``, returns the events with the ids they were given."""
        rows = [] if each is None else [_values(each, c) for c in children]
        rows += [_values(e) for e in events]
        if not rows:
            return []
        if self._postgres:
            # Held to the commit: ids become visible in the order they grow.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ROLLOUT_EVENT_LOCK)))
        if not ids:
            await conn.execute(sa.insert(rollout_events), rows)
            return []
        result = await conn.execute(
            sa.insert(rollout_events).returning(rollout_events.c.id, sort_by_parameter_order=True),
            rows,
        )
        return [attrs.evolve(e, id=i) for e, i in zip(events, result.scalars(), strict=True)]

    @_edge
    async def append_events(self, events: Sequence[RolloutEvent]) -> list[RolloutEvent]:
        if not events:
            return []
        # The database's own transaction: no rollout table changes (cached offers stand).
        async with self._db._write(Lane.CONTROL) as conn:
            return await self._log(conn, events, ids=True)

    @_edge
    async def last_event_id(self) -> int:
        async with self._read(Lane.CONTROL) as conn:
            top = (await conn.execute(sa.select(sa.func.max(rollout_events.c.id)))).scalar()
        return int(top or 0)

    @_edge
    async def list_events(
        self, filter: RolloutEventFilter = ALL_EVENTS, *, limit: int | None = None, offset: int = 0
    ) -> list[RolloutEvent]:
        table = rollout_events
        query = _log_query(
            table,
            filter.after_id,
            (
                (table.c.rollout_id, filter.rollout_id),
                (table.c.child_id, filter.child_id),
                (table.c.stage, filter.stage),
            ),
            filter.types,
            filter.kinds,
            RolloutEventKind,
            filter.since,
        )
        query = _page(query, limit, max(0, offset))
        async with self._read(Lane.CONTROL) as conn:
            return [_event(row) for row in await conn.execute(query)]
