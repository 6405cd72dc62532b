"""The Coordinator's event log: building its events, and delivering what the store appended
to subscribers, in order and once each (:class:`EventsMixin`, the base of the Coordinator's
parts)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from release_coordinator.coordinator.models import Event, EventKind, EventType, TaskService
from release_coordinator.feeds import EventFeed
from release_coordinator.storage.base import CoordinatorStore, EventFilter

__all__ = ["EventsMixin", "Subscriber", "event_json", "log", "new_event"]

#: The Coordinator's logger, one for all its parts (named after the module of its facade).
log = logging.getLogger("release_coordinator.coordinator.engine")

#: A subscriber gets every event of the log, in order; it may be sync or async.
Subscriber = Callable[[Event], Awaitable[None] | None]


def new_event(
    kind: EventKind,
    message: str,
    *,
    type: EventType = EventType.INFO,
    release_id: str | None = None,
    task_id: str | None = None,
    service: TaskService | None = None,
    service_id: str | None = None,
) -> Event:
    """An event of the coordinator's (about ``service``, or the service ``service_id``)."""
    return Event(
        type=type,
        kind=kind,
        message=message,
        release_id=release_id,
        task_id=task_id,
        task_service_id=service.id if service else service_id,
    )


def event_json(event: Event) -> dict[str, Any]:
    """An event of the log as the API shows it (the protocol's fields, plus ``kind`` and
    ``state``)."""
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "type": event.type.value,
        "kind": event.kind.value,
        "message": event.message,
        "release_id": event.release_id,
        "task_id": event.task_id,
        "task_service_id": event.task_service_id,
        "state": event.state,
    }


class EventsMixin(EventFeed):
    """Feeds subscribers from the store (:class:`~release_coordinator.feeds.EventFeed`):
    after every write, one flush reads the events appended since the last and hands them on."""

    _feed_log = log

    store: CoordinatorStore
    _subscribers: list[tuple[Subscriber, EventFilter]]  # type: ignore[assignment]

    async def _events_after(self, after_id: int) -> list[Event]:
        return await self.store.list_events(EventFilter(after_id=after_id))

    async def _append_event(self, event: Event) -> None:
        """Write one event that comes with no change of state, and deliver it."""
        await self.store.append_events([event])
        self._events_written()

    async def _last_event_id(self) -> int:
        return await self.store.last_event_id()
