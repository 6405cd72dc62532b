"""Feeding an event log's subscribers from the store, the same way for both halves: the
Coordinator's events (:class:`~release_coordinator.coordinator.events.EventsMixin`) and the
RolloutManager's (:class:`~release_coordinator.rollout.bookkeeping._Bookkeeping`).

After every write, :meth:`EventFeed._events_written` schedules one flush (a task of the running
loop) that reads the events appended since the last flush and hands each to the subscribers
whose filter it matches, in order and once each: one flush at a time, each starting where the
last one ended, so that a subscriber that awaits never sees an event twice or out of order.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol

__all__ = ["EventFeed"]


class _Filter(Protocol):
    def matches(self, event: Any) -> bool: ...


class EventFeed:
    """The subscribers of an event log and their delivery (see the module). A part of a
    class whose ``_events_after`` reads the log; call :meth:`_init_feed` in ``__init__``."""

    #: Where a failing subscriber is logged, and how it is named there.
    _feed_log: ClassVar[logging.Logger]
    _feed_what: ClassVar[str] = "event subscriber"

    _subscribers: list[tuple[Callable[[Any], Awaitable[None] | None], _Filter]]
    _events_seen: int
    _flush_scheduled: bool
    _flush_lock: asyncio.Lock
    _flushes: set[asyncio.Task[None]]

    def _init_feed(self) -> None:
        self._subscribers = []
        self._events_seen = 0
        self._flush_scheduled = False
        self._flush_lock = asyncio.Lock()
        self._flushes = set()

    async def _events_after(self, after_id: int) -> Sequence[Any]:
        """The events of the log with an id greater than ``after_id``, oldest first."""
        raise NotImplementedError

    def _events_written(self) -> None:
        """The store appended events: deliver them to the subscribers (see the module)."""
        if not self._subscribers or self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: flushed on the next write
            return
        self._flush_scheduled = True
        flush = loop.create_task(self._flush_events())
        self._flushes.add(flush)  # asyncio keeps only weak references to tasks
        flush.add_done_callback(self._flushes.discard)

    async def _flush_events(self) -> None:
        async with self._flush_lock:
            self._flush_scheduled = False
            if not self._subscribers:
                return
            events = await self._events_after(self._events_seen)
            if events:
                self._events_seen = events[-1].id
            await self._deliver(events)

    async def _deliver(self, events: Sequence[Any]) -> None:
        for event in events:
            for subscriber, flt in list(self._subscribers):
                if not flt.matches(event):
                    continue
                try:
                    result = subscriber(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._feed_log.exception("%s %r failed", self._feed_what, subscriber)
