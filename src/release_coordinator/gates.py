"""One decision across both halves: rollouts gated on data releases.

A rollout created with ``after_release="RE_..."`` (:meth:`RolloutManager.create_rollout
<release_coordinator.rollout.operations._Operations.create_rollout>`, or ``after_release`` in
the ``POST /rollouts`` body) waits, a draft, for that data release of the Coordinator: when the
release is ``published`` the rollout starts; when it ends ``failed`` or ``canceled`` the
rollout is aborted with a reason naming the release.

:class:`ReleaseGate` joins the two halves, which otherwise know nothing of each other: it gives
the manager a way to look a release up (:attr:`RolloutManager.release_states`, used to refuse
an unknown release at creation and a start before the release is published), and, while
:meth:`ReleaseGate.running`, it *reconciles*: on entry, whenever the coordinator logs that a
release ended, and every ``interval`` seconds, it reads every draft rollout that waits for a
release and starts or aborts it by the release's state. Reading the state rather than trusting
the events makes a restart, a missed event, and a release published by another process (over
a shared database) all the same case. Several gates over one shared database may race to
start (or abort) the same rollout: the manager's compare-and-set lets one win, and the others'
refusals are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.models import Event, EventKind
from release_coordinator.errors import ConfigurationError, ConflictError, NotFoundError
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Rollout, RolloutState
from release_coordinator.rollout.operations import RELEASE_ENDED_BADLY

__all__ = ["ReleaseGate"]

log = logging.getLogger("release_coordinator.gates")

_ENDED = frozenset({"published", *RELEASE_ENDED_BADLY})


class ReleaseGate:
    """Starts the rollouts waiting for a data release once it is published, aborts them if it
    fails or is canceled (see the module documentation).

    Constructing it sets ``manager.release_states`` to the coordinator's (a release's state by
    its id). Run it with ``async with gate.running():`` after the coordinator and the manager
    started; :meth:`reconcile` is one pass, callable on its own (tests, a cron-like host).
    """

    def __init__(
        self, coordinator: Coordinator, manager: RolloutManager, *, interval: float = 5.0
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"the gate's interval must be positive, not {interval}")
        self.coordinator = coordinator
        self.manager = manager
        self.interval = interval
        manager.release_states = self.release_state
        self._wake = asyncio.Event()

    async def release_state(self, release_id: str) -> str:
        """The state of the data release ``release_id``; NotFoundError if there is none."""
        return (await self.coordinator.get_release(release_id)).state.value

    async def reconcile(self) -> list[Rollout]:
        """Start or abort every draft rollout whose data release has ended; the rollouts it
        changed."""
        changed = []
        for rollout in await self.manager.list_rollouts(states={RolloutState.DRAFT}):
            if not rollout.after_release:
                continue
            try:
                state = await self.release_state(rollout.after_release)
            except NotFoundError:
                log.warning(
                    "rollout %s waits for data release %s, which is unknown",
                    rollout.id,
                    rollout.after_release,
                )
                continue
            try:
                if state == "published":
                    changed.append(await self.manager.start(rollout.id))
                    log.info(
                        "rollout %s started: data release %s is published",
                        rollout.id,
                        rollout.after_release,
                    )
                elif state in RELEASE_ENDED_BADLY:
                    changed.append(
                        await self.manager.abort(
                            rollout.id,
                            reason=f"data release {rollout.after_release} is {state}",
                        )
                    )
                    log.info(
                        "rollout %s aborted: data release %s is %s",
                        rollout.id,
                        rollout.after_release,
                        state,
                    )
            except ConflictError:
                continue  # moved meanwhile (an operator, or another process's gate)
        return changed

    def _on_event(self, event: Event) -> None:
        if (
            event.kind is EventKind.TRANSITION
            and event.release_id is not None
            and event.task_id is None
            and str(event.state) in _ENDED
        ):
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:  # a store hiccup: the next pass tries again
                log.exception("reconciling the rollouts gated on data releases failed")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReleaseGate]:
        """``async with gate.running():`` subscribes to the coordinator's events, reconciles
        once, and keeps reconciling (on every release that ends, and every ``interval``
        seconds) until the block exits."""
        unsubscribe = await self.coordinator.subscribe(self._on_event)
        try:
            await self.reconcile()
            task = asyncio.create_task(self._loop(), name="release-gate")
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            unsubscribe()
