"""The Coordinator's event log in SQL: events written with the changes they record, and read.

Event ids come from the database (an autoincrement key); on PostgreSQL they are taken under a
transaction-level advisory lock held to the commit, so that ids become visible in the order
they grow and following the log with ``after_id`` never skips a late commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.coordinator.models import Event, EventKind, EventType
from release_coordinator.storage.base import _ALL, EventFilter
from release_coordinator.storage.sql.database import SQLDatabase
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.schema import events

_Select = TypeVar("_Select", bound=sa.Select[Any])

#: Advisory lock key (PostgreSQL) of the event log's order.
_EVENT_LOCK = 0x52434556  # "RCEV"


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


def _page(query: _Select, limit: int | None, offset: int) -> _Select:
    """``query`` from ``offset`` on, at most ``limit`` rows (a listing's page)."""
    if offset:
        query = query.offset(offset)
    if limit is not None:
        query = query.limit(max(0, limit))
    return query


def _log_query(
    table: sa.Table,
    after_id: int,
    equal: Iterable[tuple[sa.Column[Any], str | None]],
    types: Iterable[str] | None,
    kinds: Iterable[str] | None,
    kind: type[StrEnum],
    since: datetime | None,
) -> sa.Select[Any]:
    """The events of the log ``table`` after ``after_id``, oldest first: those whose columns
    ``equal`` pairs with a value (None: any) hold it, of ``types`` and ``kinds`` (of the enum
    ``kind``; None: any), at or after ``since``: how the Coordinator's event log and the
    rollout event log are filtered."""
    query = sa.select(table).where(table.c.id > after_id).order_by(table.c.id)
    for column, value in equal:
        if value is not None:
            query = query.where(column == value)
    if types is not None:
        query = query.where(table.c.type.in_([EventType(t).value for t in types]))
    if kinds is not None:
        query = query.where(table.c.kind.in_([kind(k).value for k in kinds]))
    if since is not None:
        query = query.where(table.c.at >= since)
    return query


class _EventLog(SQLDatabase):
    """The event log's part of :class:`~release_coordinator.storage.sql.SQLStore`, and the
    event writing every state change of the other parts does in its own transaction."""

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
        query = _log_query(
            events,
            filter.after_id,
            (
                (events.c.release_id, filter.release_id),
                (events.c.task_id, filter.task_id),
                (events.c.task_service_id, filter.task_service_id),
            ),
            filter.types,
            filter.kinds,
            EventKind,
            filter.since,
        )
        if filter.states is not None:
            query = query.where(events.c.state.in_(list(filter.states)))
        query = _page(query, limit, offset)
        async with self._read() as conn:
            return [_event(row) for row in await conn.execute(query)]
