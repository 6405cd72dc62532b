"""The rollout half's kit for the other side: :class:`SimulatedLeaf`, a simulated edge node
that implements the child side of the protocol.

A :class:`SimulatedLeaf` behaves like the protocol's edge agent: it polls its parent, fetches a
release, runs its stages in order (serving synthetic traffic split by the stage's variants),
reports each stage's summary, waits on ``WaitForSignal`` stages until the parent says they end,
and follows the strategy's end actions to a roll-out or a roll-back. A leaf in a *failure
region* serves the new version with a high error rate and slow answers, so the stage's
conditions fail there. :mod:`~release_coordinator.rollout.simulate` runs fleets of them.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from release_coordinator.fsm.rollout import StageStatus
from release_coordinator.rollout.results import (
    ResultReport,
    StageReport,
    StageSummary,
    TimesSummary,
    end_conditions_met,
    evaluate,
    to_original,
)
from release_coordinator.rollout.strategy import Stage, StageType, Strategy, parse_strategy
from release_coordinator.transports.base import ParentLink

__all__ = ["SimulatedLeaf"]


_PROXY_TIMES = TimesSummary(22.0, 6.6, 77.0)


@functools.lru_cache(maxsize=32)
def _parsed(text: str) -> Strategy:
    """A strategy document parsed once per process: a real node parses it on its own CPU, a
    simulated fleet shares one (a :class:`Strategy` is immutable)."""
    return parse_strategy(text)


class SimulatedLeaf:
    """One simulated edge node below ``parent``; call :meth:`step` once per poll interval.

    ``failing`` makes the new version misbehave on this node (errors at ``failing_error_rate``
    and slow answers); ``error_rate`` is the per-call error rate of a healthy version.
    ``calls_per_step`` is the traffic served between two steps. ``slower`` (a factor, 0: off)
    makes the new version that many times as slow as the old one (1.2: 20% slower), a
    regression the stage's absolute conditions may let through and the manager's canary
    judgement (:mod:`~release_coordinator.rollout.judgement`) catches. The time spent in a
    stage (what ``minDuration`` end conditions compare with) is measured on ``clock`` (seconds, e.g.
    ``time.monotonic``) when one is given, so ``minDuration`` means wall-clock time; without a
    clock each step stands for ``step_seconds``.
    """

    def __init__(
        self,
        parent: ParentLink,
        area: dict[str, Any],
        *,
        leaf_id: str = "",
        failing: bool = False,
        calls_per_step: int = 50,
        step_seconds: float = 1.0,
        clock: Callable[[], float] | None = None,
        error_rate: float = 0.001,
        failing_error_rate: float = 0.3,
        seed: int | None = None,
        slower: float = 0.0,
    ) -> None:
        self.parent = parent
        self.area = area
        self.id = leaf_id
        self.failing = failing
        self.calls_per_step = calls_per_step
        self.step_seconds = step_seconds
        self.clock = clock
        self.error_rate = error_rate
        self.failing_error_rate = failing_error_rate
        self.slower = slower
        self.rng = random.Random(seed)
        self.release_id = ""
        self.strategy: Strategy | None = None
        self.stage: Stage | None = None
        self.waiting = False
        self.elapsed = 0.0
        self.entered_at = 0.0
        self._share_new = 0.0
        self.calls = [0, 0]
        self.errors = [0, 0]
        self.outcome = ""  # "rolled_out" | "rolled_back" once the release ended
        self.history: list[str] = []

    @property
    def done(self) -> bool:
        return bool(self.outcome)

    async def step(self) -> None:
        """One agent iteration: poll, and move the current release on by one step."""
        answer = await self.parent.poll(self.id, self.area, 0)
        self.id = answer.id
        if self.strategy is None or self.done:
            if answer.new_release and answer.new_release != self.release_id:
                await self._start(answer.new_release)
            return
        if self.release_id in answer.aborted:  # the parent aborted it: roll back now
            await self._finish(StageStatus.FAILURE, "rollback")
            return
        await self._play()

    async def _start(self, release_id: str) -> None:
        # Taken on only once both are fetched: a failed fetch is tried again at the next step.
        strategy = _parsed(await self.parent.get_release(self.id, release_id))
        await self.parent.get_functions(release_id, self.id)
        self.release_id = release_id
        self.strategy = strategy
        self.outcome = ""
        self._enter(self.strategy.first_stage)

    def _enter(self, stage: Stage) -> None:
        self.stage = stage
        self.waiting = False
        self.elapsed = 0.0
        self.entered_at = self.clock() if self.clock is not None else 0.0
        self.calls = [0, 0]
        self.errors = [0, 0]
        self.history.append(stage.name)
        self._share_new = (
            next((v.traffic_percentage for v in stage.variants if v.name == "new_version"), 0) / 100
        )

    def _serve(self) -> None:
        # Each call goes to the new version with the stage's share and fails with its version's
        # error rate (counted, not looped over one by one: a fleet has many leaves).
        random = self.rng.random
        share_new = self._share_new
        new = sum(1 for _ in range(self.calls_per_step) if random() < share_new)
        old = self.calls_per_step - new
        new_rate = self.failing_error_rate if self.failing else self.error_rate
        self.calls[0] += old
        self.calls[1] += new
        if self.error_rate > 0:
            rate = self.error_rate
            self.errors[0] += sum(1 for _ in range(old) if random() < rate)
        if new_rate > 0:
            self.errors[1] += sum(1 for _ in range(new) if random() < new_rate)
        if self.clock is not None:
            self.elapsed = self.clock() - self.entered_at
        else:
            self.elapsed += self.step_seconds

    def _summary(self) -> StageSummary:
        random = self.rng.random
        f1 = round(20 + random() * 5, 3)
        f2 = round((60 if self.failing else 18) + random() * 5, 3)
        if self.slower and not self.failing:
            f2 = round(f1 * self.slower, 3)
        (calls1, calls2), (errors1, errors2) = self.calls, self.errors
        return StageSummary(
            _PROXY_TIMES,
            TimesSummary(f1, f1 * 0.3, f1 * 3.5),
            TimesSummary(f2, f2 * 0.3, f2 * 3.5),
            errors1 / calls1 if calls1 else 0.0,
            errors2 / calls2 if calls2 else 0.0,
            calls1,
            calls2,
        )

    async def _report(
        self, status: StageStatus, next_stage: str, summary: StageSummary | None = None
    ) -> bool:
        """Report the stage; False when the parent answers that the rollout was aborted (the
        leaf has rolled back then)."""
        assert self.stage is not None
        report = ResultReport(
            self.id,
            self.release_id,
            (StageReport(self.stage.name, status, next_stage, summary or self._summary()),),
        )
        if await self.parent.submit_result(to_original(report)) == "rollback":
            self.outcome = "rolled_back"
            self.stage = None
            return False
        return True

    async def _play(self) -> None:
        stage = self.stage
        assert stage is not None
        assert self.strategy is not None
        if self.waiting:
            answer = await self.parent.end_stage(self.id, self.release_id, stage.name)
            if answer.action == "rollback":
                await self._finish(StageStatus.FAILURE, "rollback")
            elif answer.end_stage:
                await self._end_stage(success=True)
            return
        self._serve()
        summary = self._summary()
        healthy = evaluate(stage, summary)
        if not healthy and sum(self.calls) >= 20:
            await self._end_stage(success=False)
            return
        if not end_conditions_met(stage, summary, timedelta(seconds=self.elapsed)):
            return
        if stage.type is StageType.WAIT_FOR_SIGNAL:
            if await self._report(StageStatus.SUCCESS_WAITING, "", summary):
                self.waiting = True
        else:
            await self._end_stage(success=True)

    async def _end_stage(self, *, success: bool) -> None:
        assert self.stage is not None
        assert self.strategy is not None
        action = self.stage.end_action.next_stage(success)
        status = StageStatus.COMPLETED if success else StageStatus.FAILURE
        if action is None:  # rollout or rollback
            final = (
                self.stage.end_action.on_success if success else self.stage.end_action.on_failure
            )
            await self._finish(status, "", outcome=final)
            return
        if await self._report(status, action):
            self._enter(self.strategy.stage(action))

    async def _finish(self, status: StageStatus, next_stage: str, *, outcome: str = "") -> None:
        if not await self._report(status, next_stage):
            return  # aborted meanwhile: rolled back
        outcome = outcome or next_stage
        self.outcome = "rolled_out" if outcome == "rollout" else "rolled_back"
        self.stage = None
