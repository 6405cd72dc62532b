"""Two lanes into one database: the control plane's work is never queued behind the fleet's.

A busy manager's children write all the time (a stage result, a stage's end, a poll seen), so
on SQLite, whose one writer is taken in turn, an operator's request or the Coordinator's next
step could wait behind hundreds of them. Measured before the lanes (the soak test: 500 HTTP
children on one SQLite ``serve``, the machine's cores busy with other work): a write held
SQLite's lock for up to 2.5 s (the hops to the driver's thread are slow when the cores are
busy), writers queued for up to 2.2 s, and ``POST /releases`` once took 62 s.

Every transaction now runs in a lane:

- :attr:`Lane.CONTROL`: the Coordinator's store (task services, releases, tasks, events,
  leases) and a rollout's own record (created, paused, resumed, aborted, completed, read);
- :attr:`Lane.FLEET`: what children cause (their records, their results, targeting, polls).

On SQLite a control writer waiting for the write lock is let in before any fleet writer that
waits (:class:`LaneLock`): it waits for the writer that holds the lock, never for the queue.
Each lane also has its own connections (file databases and PostgreSQL), so a control read
never waits for a connection that the fleet's readers hold. The fleet lane can wait while
control writes keep coming; they are few (people and the Coordinator's steps), so it never
waits long.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import AsyncIterator

__all__ = ["Lane", "LaneLock"]


class Lane(enum.Enum):
    """Whose work a transaction is (see the module's text)."""

    CONTROL = "control"
    FLEET = "fleet"


class LaneLock:
    """A lock taken in order of arrival within a lane, :attr:`Lane.CONTROL` before
    :attr:`Lane.FLEET`: when it is released, the first waiting control holder gets it, or, if
    none waits, the first waiting fleet holder.

    ``async with lock.hold(lane):``. A waiter that is cancelled leaves the queue; one that is
    cancelled just as the lock was handed to it passes it on.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiting: dict[Lane, collections.deque[asyncio.Future[None]]] = {
            Lane.CONTROL: collections.deque(),
            Lane.FLEET: collections.deque(),
        }

    @property
    def locked(self) -> bool:
        return self._held

    def waiting(self, lane: Lane) -> int:
        """How many wait in ``lane``."""
        return sum(not f.done() for f in self._waiting[lane])

    @contextlib.asynccontextmanager
    async def hold(self, lane: Lane) -> AsyncIterator[None]:
        await self._acquire(lane)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, lane: Lane) -> None:
        ahead = self._waiting[Lane.CONTROL] or (lane is Lane.FLEET and self._waiting[Lane.FLEET])
        if not self._held and not ahead:
            self._held = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed over as it was cancelled: the next one's turn
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[lane].remove(turn)
            raise

    def _release(self) -> None:
        for lane in (Lane.CONTROL, Lane.FLEET):
            queue = self._waiting[lane]
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # the lock passes to it, still held
                    return
        self._held = False
