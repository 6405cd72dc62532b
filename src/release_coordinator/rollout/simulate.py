"""Simulated edge nodes: leaf agents that play a strategy with synthetic metrics.

A :class:`SimulatedLeaf` behaves like the protocol's edge agent: it polls its parent, fetches a
release, runs its stages in order (serving synthetic traffic split by the stage's variants),
reports each stage's summary, waits on ``WaitForSignal`` stages until the parent says they end,
and follows the strategy's end actions to a roll-out or a roll-back. A leaf in a *failure
region* serves the new version with a high error rate, so the stage's conditions fail there.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from release_coordinator.fsm.rollout import StageStatus
from release_coordinator.rollout.relay import ParentLink
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

__all__ = ["SimulatedLeaf"]


class SimulatedLeaf:
    """One simulated edge node below ``parent``; call :meth:`step` once per poll interval.

    ``failing`` makes the new version misbehave on this node. ``calls_per_step`` is the
    traffic served between two steps; ``step_seconds`` how much time a step stands for (the
    clock of ``minDuration`` end conditions).
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
        seed: int | None = None,
    ) -> None:
        self.parent = parent
        self.area = area
        self.id = leaf_id
        self.failing = failing
        self.calls_per_step = calls_per_step
        self.step_seconds = step_seconds
        self.rng = random.Random(seed)
        self.release_id = ""
        self.strategy: Strategy | None = None
        self.stage: Stage | None = None
        self.waiting = False
        self.elapsed = 0.0
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
        await self._play()

    async def _start(self, release_id: str) -> None:
        self.release_id = release_id
        self.strategy = parse_strategy(await self.parent.get_release(self.id, release_id))
        await self.parent.get_functions(release_id)
        self.outcome = ""
        self._enter(self.strategy.first_stage)

    def _enter(self, stage: Stage) -> None:
        self.stage = stage
        self.waiting = False
        self.elapsed = 0.0
        self.calls = [0, 0]
        self.errors = [0, 0]
        self.history.append(stage.name)

    def _serve(self) -> None:
        assert self.stage is not None
        share_new = next(
            (v.traffic_percentage for v in self.stage.variants if v.name == "new_version"), 0
        )
        for _ in range(self.calls_per_step):
            new = self.rng.random() * 100 < share_new
            index = 1 if new else 0
            self.calls[index] += 1
            rate = (0.3 if self.failing else 0.001) if new else 0.001
            if self.rng.random() < rate:
                self.errors[index] += 1
        self.elapsed += self.step_seconds

    def _summary(self) -> StageSummary:
        def times(base: float) -> TimesSummary:
            return TimesSummary(round(base, 3), round(base * 0.3, 3), round(base * 3.5, 3))

        f1 = times(20 + self.rng.random() * 5)
        f2 = times((60 if self.failing else 18) + self.rng.random() * 5)
        rates = [e / c if c else 0.0 for e, c in zip(self.errors, self.calls, strict=True)]
        return StageSummary(times(22.0), f1, f2, rates[0], rates[1], self.calls[0], self.calls[1])

    async def _report(self, status: StageStatus, next_stage: str) -> None:
        assert self.stage is not None
        report = ResultReport(
            self.id,
            self.release_id,
            (StageReport(self.stage.name, status, next_stage, self._summary()),),
        )
        await self.parent.submit_result(to_original(report))

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
            await self._report(StageStatus.SUCCESS_WAITING, "")
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
        await self._report(status, action)
        self._enter(self.strategy.stage(action))

    async def _finish(self, status: StageStatus, next_stage: str, *, outcome: str = "") -> None:
        await self._report(status, next_stage)
        outcome = outcome or next_stage
        self.outcome = "rolled_out" if outcome == "rollout" else "rolled_back"
        self.stage = None
