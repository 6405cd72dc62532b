"""The Coordinator's drivers: one asyncio task per release it holds the lease of, running the
release's reconciliation loop (read the stored state, take the next step, pause), and the time
limits that fail a release or a task that stops making progress.

:class:`DriverMixin` is a part of :class:`~release_coordinator.coordinator.engine.Coordinator`;
it claims releases (its own and unowned ones), renews and drops their leases, and decides each
step with the state machines of :mod:`release_coordinator.fsm.release`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from release_coordinator.coordinator.events import log, new_event
from release_coordinator.coordinator.fanout import FanOutMixin
from release_coordinator.coordinator.limits import WAITING_ON, late_tasks
from release_coordinator.coordinator.models import (
    _TASK_FINISHED,
    Event,
    EventKind,
    EventType,
    Release,
    Task,
    utcnow,
)
from release_coordinator.coordinator.plans import task_change
from release_coordinator.coordinator.publish_gates import PublishGatesMixin, publish_gate
from release_coordinator.coordinator.wire import TaskAction
from release_coordinator.errors import ConcurrentUpdateError
from release_coordinator.fsm.release import RELEASE_MACHINE, ReleaseState, TaskState

__all__ = ["DriverMixin"]

RS = ReleaseState
TS = TaskState


def _in_state(tasks: Iterable[Task], state: TaskState) -> list[Task]:
    """The tasks in ``state`` (an argument: ``TS.X`` in the filter itself would be an Enum
    member lookup per task, which is slow)."""
    return [t for t in tasks if t.state is state]


def _all_in_state(tasks: Iterable[Task], state: TaskState) -> bool:
    return all(t.state is state for t in tasks)


class _Phase(NamedTuple):
    """A release state in which each task is sent one action, then polled until it is done."""

    #: Tasks in this state are sent ``action``...
    send_to: TaskState
    action: TaskAction
    #: ... tasks in this state are asked for their status...
    polled: TaskState
    #: ... and once every task is in this state, the release moves on by ``trigger``.
    done: TaskState
    trigger: str


_PHASES = {
    RS.RUNNING: _Phase(TS.INITIALIZED, TaskAction.START, TS.RUNNING, TS.STAGED, "stage"),
    RS.PUBLISHING: _Phase(TS.STAGED, TaskAction.PUBLISH, TS.PUBLISHING, TS.PUBLISHED, "complete"),
}


class DriverMixin(FanOutMixin, PublishGatesMixin):
    """Claiming releases, the per-release driver loop, its steps and its time limits."""

    owner: str
    _drivers: dict[str, asyncio.Task[None]]
    _wake: dict[str, asyncio.Event]
    _changed: asyncio.Condition
    _closed: bool

    async def _ensure_driver(self, release_id: str) -> None:
        if self._closed:
            return
        if self._driving(release_id):
            self._poke(release_id)
            return
        claimed = await self.store.claim_release(release_id, self.owner, self.config.lease_seconds)
        if claimed and not self._closed:  # (closed meanwhile: leave it to another coordinator)
            self._spawn(release_id)

    def _driving(self, release_id: str) -> bool:
        """Whether a driver of this coordinator runs for the release."""
        driver = self._drivers.get(release_id)
        return driver is not None and not driver.done()

    def _spawn(self, release_id: str) -> None:
        """Start driving the release, unless a driver runs already (one spawned while its
        lease was being claimed, by the claim loop say): that one is woken instead. Never two
        drivers for one release in one coordinator."""
        if self._driving(release_id):
            self._poke(release_id)
            return
        self._wake.setdefault(release_id, asyncio.Event())
        self._drivers[release_id] = asyncio.get_running_loop().create_task(
            self._drive(release_id), name=f"rc-drive-{release_id}"
        )

    def _poke(self, release_id: str) -> None:
        wake = self._wake.get(release_id)
        if wake is not None:
            wake.set()

    async def _claim_unowned(self) -> None:
        claimed = await self.store.claim_releases(self.owner, self.config.lease_seconds)
        for release in claimed:
            if not self._driving(release.id) and not self._closed:
                if release.state not in (RS.WAITING,):
                    log.info("resuming release %s (%s)", release.id, release.state)
                self._spawn(release.id)

    async def _claim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.claim_interval)
            try:
                await self._claim_unowned()
            except Exception:
                log.exception("claiming releases failed")

    async def _drive(self, release_id: str) -> None:
        me = asyncio.current_task()
        try:
            while not self._closed:  # closing: stop between steps, not inside a store call
                lease = self.config.lease_seconds
                renewed = await self.store.renew_lease(release_id, self.owner, lease)
                release = await self.store.get_release(release_id)
                if release.is_final:
                    return
                # A lease found free (dropped by a driver of ours that just ended) is taken
                # again; one that another coordinator holds is not.
                if not renewed and not await self.store.claim_release(
                    release_id, self.owner, lease
                ):
                    log.warning(
                        "lost the lease on release %s; another coordinator has it", release_id
                    )
                    return
                tasks = await self.store.list_tasks(release_id)
                try:
                    pause = await self._step(release, tasks)
                except ConcurrentUpdateError as lost:
                    # A user action (cancel, publish) or a callback moved the release while
                    # this step was being taken: read it again and decide anew, at once.
                    log.debug(
                        "release %s moved during a step (%s); reading it again", release_id, lost
                    )
                    pause = 0
                self._events_written()
                async with self._changed:
                    self._changed.notify_all()
                if pause:
                    await self._pause(release_id, pause)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Stored state is consistent (every change is a compare-and-set); the claim loop
            # picks the release up again.
            log.exception("driving release %s failed; it will be resumed", release_id)
        finally:
            # Only the registered driver lets go (a newer one may have been spawned already),
            # and it stays registered until it has: a coordinator that waits for its drivers
            # (or closes, cancelling them) does not leave a store call behind.
            if self._drivers.get(release_id) is me:
                if not self._closed:
                    with contextlib.suppress(Exception):
                        await self.store.drop_lease(release_id, self.owner)
                if self._drivers.get(release_id) is me:
                    del self._drivers[release_id]
            async with self._changed:
                self._changed.notify_all()

    async def _pause(self, release_id: str, seconds: float) -> None:
        wake = self._wake.setdefault(release_id, asyncio.Event())
        # Wake up in time to renew the lease even when nothing happens.
        limit = min(seconds, self.config.lease_seconds / 3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), limit)
        wake.clear()

    async def _step(self, release: Release, tasks: list[Task]) -> float:
        """One decision for a release; returns how long to pause before the next (0: none)."""
        state = release.state
        now = utcnow()
        if state is not RS.CANCELING:
            finished = [t for t in tasks if t.state in _TASK_FINISHED]
            if finished:
                bad = finished[0]
                await self._transition(
                    release,
                    "cancel",
                    failure=f"task {bad.id} on {bad.service_id} is {bad.state}"
                    + (f": {bad.message}" if bad.message else ""),
                )
                return 0
        if (timed_out := await self._enforce_time_limits(release, tasks, now)) is not None:
            return timed_out

        if state is RS.WAITING:
            if not tasks:
                await self._transition(release, "stage", detail=" (no enabled task service)")
            else:
                await self._transition(release, "initialize")
            return 0
        if state is RS.INITIALIZING:
            todo = _in_state(tasks, TS.WAITING)
            if not todo:
                await self._transition(release, "start")
                return 0
            return await self._fan_out(release, todo, TaskAction.INITIALIZE)
        if (phase := _PHASES.get(state)) is not None:  # running, publishing
            todo = _in_state(tasks, phase.send_to)
            if todo:
                return await self._fan_out(release, todo, phase.action, pause=0)
            if _all_in_state(tasks, phase.done):
                await self._transition(release, phase.trigger)
                return 0
            polled = _in_state(tasks, phase.polled)
            return await self._fan_out(release, polled, TaskAction.GET_STATUS)
        if state is RS.STAGED:
            if release.gates.configured:
                return await self._staged_behind_gates(release, now)
            if release.auto_publish:
                await self._transition(release, "publish", detail=" (automatic)")
                return 0
            return self.config.lease_seconds  # wait for publish() to wake us
        if state is RS.CANCELING:
            todo = [t for t in tasks if not t.is_finished]
            if todo:
                return await self._fan_out(release, todo, TaskAction.CANCEL, pause=0)
            await self._transition(release, "fail" if release.failure else "finish_cancel")
            return 0
        raise AssertionError(f"no step for release state {state}")  # pragma: no cover

    async def _staged_behind_gates(self, release: Release, now: datetime) -> float:
        """A staged release with gates before publish: ask its checks, then publish it by
        itself once every gate is open (with ``auto_publish`` or a ``publish_at``)."""
        release = await self._ask_checks(release, now)
        itself = release.auto_publish or release.gates.publish_at is not None
        if itself and publish_gate(release, utcnow()) is None:
            await self._transition(release, "publish", detail=" (automatic: gates open)")
            return 0
        return self._gate_pause(release, utcnow(), self.config.lease_seconds)

    async def _enforce_time_limits(
        self, release: Release, tasks: list[Task], now: datetime
    ) -> float | None:
        waiting_on = WAITING_ON.get(release.state)
        if waiting_on is None:
            return None
        age = (now - release.state_changed_at).total_seconds()
        if age > self.config.release_timeout:
            limit = self.config.release_timeout
            why = f"release stayed {release.state} for {age:.1f}s (limit {limit:g}s)"
            if release.state is RS.CANCELING:
                await self._transition(
                    release, "fail", failure=release.failure or why, detail=f": {why}"
                )
            else:
                await self._transition(release, "cancel", failure=why)
            return 0
        late = late_tasks(tasks, waiting_on, now, self.config.phase_timeout)
        if not late:
            return None
        changes = [
            task_change(
                release,
                t,
                "fail",
                message=f"no progress for {self.config.phase_timeout:g}s "
                f"while the release is {release.state}",
                type=EventType.ERROR,
            )
            for t in late
        ]
        await self.store.change_tasks(changes)
        return 0

    async def _transition(
        self,
        release: Release,
        trigger: str,
        *,
        failure: str | None = None,
        user: bool = False,
        detail: str = "",
    ) -> Release:
        """Move the release on by ``trigger`` (a compare-and-set), logged as a transition (and,
        for a ``user`` request, the request before it, stored with it: a request that loses
        the compare-and-set leaves no trace). ConcurrentUpdateError when the release is no
        longer in the state ``release`` was read in."""
        dest = ReleaseState(RELEASE_MACHINE.next_state(release.state, trigger, subject=release.id))
        bad = dest is RS.FAILED or (failure is not None and trigger == "cancel")
        why = f": {failure}" if failure else detail
        # The request is an event of its own; the state change is another.
        request = (
            [
                new_event(
                    EventKind.USER_ACTION,
                    f"{trigger} of release {release.name!r} requested{detail}",
                    release_id=release.id,
                )
            ]
            if user
            else []
        )
        event = Event(
            type=EventType.ERROR if bad else EventType.INFO,
            kind=EventKind.TRANSITION,
            message=f"release {release.name!r} {release.state.value} -> {dest.value}{why}",
            release_id=release.id,
            state=dest.value,
        )
        updated = await self.store.transition_release(
            release.id, {release.state}, dest, event, failure=failure, before=request
        )
        self._events_written()
        return updated
