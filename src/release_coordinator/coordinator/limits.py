"""Time limits of a release and its tasks: what the coordinator waits on in each release
state, which tasks are late, and how long a poll may pause before a limit runs out."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.coordinator.models import Release, Task, utcnow
from release_coordinator.fsm.release import ReleaseState, TaskState

__all__ = ["WAITING_ON", "late_tasks", "poll_pause"]

RS = ReleaseState
TS = TaskState

#: Per release state: the task states the coordinator is waiting to see move on.
WAITING_ON = {
    RS.INITIALIZING: frozenset({TS.WAITING}),
    RS.RUNNING: frozenset({TS.INITIALIZED, TS.RUNNING}),
    RS.PUBLISHING: frozenset({TS.STAGED, TS.PUBLISHING}),
    RS.CANCELING: frozenset(
        {TS.WAITING, TS.INITIALIZED, TS.RUNNING, TS.STAGED, TS.PUBLISHING, TS.PUBLISHED}
    ),
}


def late_tasks(
    tasks: Iterable[Task], states: Collection[TaskState], now: datetime, limit: float
) -> list[Task]:
    """The tasks in ``states`` whose last progress is more than ``limit`` seconds before
    ``now``, i.e. ``(now - t.progress_at).total_seconds() > limit``, without the arithmetic
    per task: that is ``now - t.progress_at`` of at least ``least`` microseconds, the fewest
    whose seconds (as ``total_seconds`` computes them) exceed ``limit``."""
    if math.isfinite(limit) and 0 <= limit < 10**9:  # (else: the slow way, which is exact)
        least = math.floor(limit * 10**6)
        while least > 0 and (least - 1) / 10**6 > limit:
            least -= 1
        while not least / 10**6 > limit:
            least += 1
        cutoff = now - timedelta(microseconds=least)
        return [t for t in tasks if t.state in states and t.progress_at <= cutoff]
    return [t for t in tasks if t.state in states and (now - t.progress_at).total_seconds() > limit]


def poll_pause(config: CoordinatorConfig, release: Release, tasks: list[Task]) -> float:
    """The poll interval, cut short when a time limit runs out earlier."""
    now = utcnow()
    limits = [config.phase_timeout - (now - t.progress_at).total_seconds() for t in tasks]
    limits.append(config.release_timeout - (now - release.state_changed_at).total_seconds())
    return max(0.0, min(config.poll_interval, *(x + 0.01 for x in limits)))
