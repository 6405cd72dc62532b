"""A blocking facade over the async :class:`~release_coordinator.rollout.manager.RolloutManager`.

For hosts that are not async (a Django view, a script, a Celery task), as
:class:`~release_coordinator.coordinator.sync.SyncCoordinator` is for the Coordinator: the
manager runs in an event loop on its own thread (the same machinery), with its background loop
ticking it there, and every method here waits for the coroutine of the same name. There is no
second copy of the logic::

    with SyncRolloutManager(lost_after=120) as manager:
        rollout = manager.create_rollout(bundle, europe)
        answer = manager.poll("", child_area)  # the child protocol, blocking
        manager.report(rollout.id)

``tick_interval=None`` leaves the loop off (the host then calls :meth:`SyncRolloutManager.tick`
itself). A :class:`~release_coordinator.rollout.relay.Relay` over the facade's manager runs in
the same thread: build it with ``tick_interval=None`` and start the relay there,
``manager.run(Relay(manager.manager, parent).start)``; :meth:`~SyncRolloutManager.close` stops
it with the manager's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from release_coordinator.coordinator.sync import _BlockingFacade
from release_coordinator.rollout.approving import StageApproval
from release_coordinator.rollout.archive import FunctionArchive
from release_coordinator.rollout.bookkeeping import RolloutSubscriber
from release_coordinator.rollout.events import RolloutEvent, RolloutEventFilter
from release_coordinator.rollout.geo import Area, MatchMode
from release_coordinator.rollout.interventions import RetryResult
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.rollout.policies import Policy
from release_coordinator.rollout.reports import BarrierState, RolloutReport, StageCounts
from release_coordinator.rollout.what_if import WHAT_IF_LIMIT, WhatIf
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer
from release_coordinator.storage.rollout_base import RolloutStore

__all__ = ["SyncRolloutManager"]


class SyncRolloutManager(_BlockingFacade):
    """The :class:`RolloutManager`, callable from synchronous code. Close it (or use ``with``).

    ``store``, ``lost_after``, ``clock`` and ``refresh`` are the manager's. Unless
    ``tick_interval`` is None, the manager loads its store and its background loop ticks it
    every ``tick_interval`` seconds until :meth:`close`. The wrapped manager is
    :attr:`manager` (for :meth:`run`, and for what takes a manager, such as a ``Relay``).
    """

    manager: RolloutManager

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        lost_after: float = 60.0,
        clock: Callable[[], float] | None = None,
        refresh: float = 1.0,
        tick_interval: float | None = 1.0,
    ) -> None:
        async def build() -> None:
            self.manager = RolloutManager(
                store, lost_after=lost_after, clock=clock, refresh=refresh
            )
            if tick_interval is not None:
                await self.manager.start_loops(interval=tick_interval)
            else:
                await self.manager.load()

        self._open(build)

    async def _shutdown(self) -> None:
        await self.manager.stop_loops()

    def close(self) -> None:
        """Stop the manager's background loop and the thread. Idempotent; what the store
        holds stays (a later manager over it resumes the rollouts)."""
        super().close()

    # -- the background loop -----------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """Whether the manager's background loop runs (see ``RolloutManager.is_running``)."""
        return self.manager.is_running

    def start_loops(self, *, interval: float = 1.0, load: bool = True) -> None:
        self._call(self.manager.start_loops, interval=interval, load=load)

    def stop_loops(self) -> None:
        self._call(self.manager.stop_loops)

    def tick(self) -> None:
        self._call(self.manager.tick)

    def load(self) -> None:
        self._call(self.manager.load)

    # -- the operator's calls ----------------------------------------------------------------
    def create_rollout(
        self,
        bundle: ReleaseBundle,
        target: Area | Mapping[str, Any],
        *,
        name: str = "",
        match: MatchMode = "intersects",
        priority: int = 0,
        policy: Policy | None = None,
        start: bool = True,
        gated: bool = False,
    ) -> Rollout:
        return self._call(
            self.manager.create_rollout,
            bundle,
            target,
            name=name,
            match=match,
            priority=priority,
            policy=policy,
            start=start,
            gated=gated,
        )

    def start(self, rollout_id: str) -> Rollout:
        """Start a draft rollout (the operator's action, not the background loop: see
        :meth:`start_loops`)."""
        return self._call(self.manager.start, rollout_id)

    def pause(self, rollout_id: str) -> Rollout:
        return self._call(self.manager.pause, rollout_id)

    def resume(self, rollout_id: str) -> Rollout:
        return self._call(self.manager.resume, rollout_id)

    def abort(self, rollout_id: str, *, reason: str = "aborted by the operator") -> Rollout:
        return self._call(self.manager.abort, rollout_id, reason=reason)

    def promote(self, rollout_id: str, stage_name: str) -> Rollout:
        return self._call(self.manager.promote, rollout_id, stage_name)

    def approve(self, rollout_id: str, stage_name: str, *, actor: str = "") -> Rollout:
        return self._call(self.manager.approve, rollout_id, stage_name, actor=actor)

    def approvals(self, rollout_id: str) -> tuple[StageApproval, ...]:
        return self._call(self.manager.approvals, rollout_id)

    def what_if(self, rollout_id: str, *, limit: int = WHAT_IF_LIMIT) -> WhatIf:
        return self._call(self.manager.what_if, rollout_id, limit=limit)

    def exclude(
        self, rollout_id: str, child_id: str, *, reason: str = "", actor: str = ""
    ) -> ChildRelease:
        return self._call(self.manager.exclude, rollout_id, child_id, reason=reason, actor=actor)

    def retry(
        self, rollout_id: str, children: Iterable[str] | None = None, *, actor: str = ""
    ) -> RetryResult:
        return self._call(self.manager.retry, rollout_id, children, actor=actor)

    def open_barrier(self, rollout_id: str, stage_name: str) -> None:
        self._call(self.manager.open_barrier, rollout_id, stage_name)

    def get_rollout(self, rollout_id: str) -> Rollout:
        return self._call(self.manager.get_rollout, rollout_id)

    def list_rollouts(self, *, states: set[RolloutState] | None = None) -> list[Rollout]:
        return self._call(self.manager.list_rollouts, states=states)

    def children(self) -> list[Child]:
        return self._call(self.manager.children)

    def live_children(self) -> list[Child]:
        return self._call(self.manager.live_children)

    def report(self, rollout_id: str, *, area: Area | None = None) -> RolloutReport:
        return self._call(self.manager.report, rollout_id, area=area)

    def barrier(self, rollout_id: str, stage_name: str) -> BarrierState:
        return self._call(self.manager.barrier, rollout_id, stage_name)

    def stage_counts(self, rollout_id: str, stage_name: str) -> StageCounts:
        return self._call(self.manager.stage_counts, rollout_id, stage_name)

    # -- the event log -------------------------------------------------------------------------
    def list_events(self, **filters: Any) -> list[RolloutEvent]:
        """The rollout event log (the filters of ``RolloutManager.list_events``)."""
        return self._call(self.manager.list_events, **filters)

    def subscribe(
        self, subscriber: RolloutSubscriber, *, filter: RolloutEventFilter | None = None
    ) -> Callable[[], None]:
        """Subscribe to rollout events; ``subscriber`` is called in the manager's thread."""
        return self._call(self.manager.subscribe, subscriber, filter=filter)

    # -- the child protocol ------------------------------------------------------------------
    def poll(
        self,
        child_id: object,
        area: object,
        number_of_children: object = 0,
        *,
        area_key: bytes | None = None,
    ) -> PollAnswer:
        return self._call(self.manager.poll, child_id, area, number_of_children, area_key=area_key)

    def get_release(self, child_id: object, release_id: object) -> str:
        return self._call(self.manager.get_release, child_id, release_id)

    def release(self, child_id: object, release_id: object) -> ReleaseBundle:
        return self._call(self.manager.release, child_id, release_id)

    def get_functions(self, release_id: object, child_id: object = "") -> bytes:
        return self._call(self.manager.get_functions, release_id, child_id)

    def archive(self, release_id: object, child_id: object = "") -> FunctionArchive:
        return self._call(self.manager.archive, release_id, child_id)

    def submit_result(self, body: object) -> str:
        return self._call(self.manager.submit_result, body)

    def end_stage(
        self, child_id: object, strategy_id: object, stage_name: object
    ) -> EndStageAnswer:
        return self._call(self.manager.end_stage, child_id, strategy_id, stage_name)
