"""The data-release state machines: one for a release, one for each of its tasks.

Exactly the states of the task-service protocol. Both are declared once here with
``transitions`` (see :class:`~release_coordinator.fsm.base.MachineSpec`); the coordinator and
every store consult them, and ``docs/`` shows them as diagrams generated from these
declarations.

Release: ``waiting -> initializing -> running -> staged -> publishing -> published``; ``cancel``
from any non-final state to ``canceling`` and ``finish_cancel`` to ``canceled``; ``fail`` from any
non-final state (``canceling`` included) to ``failed``. A release with no enabled task service
goes from ``waiting`` straight to ``staged``.

Task: ``waiting -> initialized -> running -> staged -> publishing -> published``;
``waiting -> rejected``; any non-final state to ``failed`` or ``canceled``. A published task is
not final for a task: when the release fails later, its task services are told to cancel and
the task ends ``canceled``.
"""

from __future__ import annotations

from enum import StrEnum

from release_coordinator.fsm.base import MachineSpec, Transition

__all__ = [
    "RELEASE_MACHINE",
    "TASK_MACHINE",
    "ReleaseState",
    "TaskState",
    "reachable_task_path",
    "task_state_behind",
    "task_steps",
]


class ReleaseState(StrEnum):
    WAITING = "waiting"
    INITIALIZING = "initializing"
    RUNNING = "running"
    STAGED = "staged"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    CANCELING = "canceling"
    CANCELED = "canceled"
    FAILED = "failed"


class TaskState(StrEnum):
    WAITING = "waiting"
    INITIALIZED = "initialized"
    RUNNING = "running"
    STAGED = "staged"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELED = "canceled"


R = ReleaseState
_RELEASE_ACTIVE = (R.WAITING, R.INITIALIZING, R.RUNNING, R.STAGED, R.PUBLISHING)

RELEASE_MACHINE = MachineSpec(
    "release",
    [s.value for s in ReleaseState],
    [
        Transition("initialize", (R.WAITING,), R.INITIALIZING),
        Transition("start", (R.INITIALIZING,), R.RUNNING),
        # "waiting" only when no task service is enabled: there is nothing to stage.
        Transition("stage", (R.RUNNING, R.WAITING), R.STAGED),
        Transition("publish", (R.STAGED,), R.PUBLISHING),
        Transition("complete", (R.PUBLISHING,), R.PUBLISHED),
        Transition("cancel", _RELEASE_ACTIVE, R.CANCELING),
        Transition("finish_cancel", (R.CANCELING,), R.CANCELED),
        Transition("fail", (*_RELEASE_ACTIVE, R.CANCELING), R.FAILED),
    ],
    initial=R.WAITING,
    final=(R.PUBLISHED, R.CANCELED, R.FAILED),
)

T = TaskState
_TASK_LIVE = (T.WAITING, T.INITIALIZED, T.RUNNING, T.STAGED, T.PUBLISHING, T.PUBLISHED)

TASK_MACHINE = MachineSpec(
    "task",
    [s.value for s in TaskState],
    [
        Transition("initialize", (T.WAITING,), T.INITIALIZED),
        Transition("reject", (T.WAITING,), T.REJECTED),
        Transition("start", (T.INITIALIZED,), T.RUNNING),
        Transition("stage", (T.RUNNING,), T.STAGED),
        Transition("publish", (T.STAGED,), T.PUBLISHING),
        Transition("complete", (T.PUBLISHING,), T.PUBLISHED),
        Transition("fail", _TASK_LIVE, T.FAILED),
        Transition("cancel", _TASK_LIVE, T.CANCELED),
    ],
    initial=T.WAITING,
    final=(T.REJECTED, T.FAILED, T.CANCELED),
)

#: The normal path of a task and the trigger that enters each state along it.
_PATH: tuple[tuple[TaskState, str], ...] = (
    (T.WAITING, ""),
    (T.INITIALIZED, "initialize"),
    (T.RUNNING, "start"),
    (T.STAGED, "stage"),
    (T.PUBLISHING, "publish"),
    (T.PUBLISHED, "complete"),
)
_PATH_INDEX = {state: i for i, (state, _) in enumerate(_PATH)}

Steps = tuple[tuple[str, TaskState], ...]

#: The furthest state a task service may report while the release is in a given state: what
#: the actions the coordinator may have sent so far let it reach.
_REACH = {
    ReleaseState.INITIALIZING: T.INITIALIZED,
    ReleaseState.RUNNING: T.STAGED,
    ReleaseState.STAGED: T.STAGED,
    ReleaseState.PUBLISHING: T.PUBLISHED,
}


def _steps(current: TaskState, target: TaskState, release: ReleaseState) -> Steps | None:
    here, there = _PATH_INDEX[current], _PATH_INDEX[target]
    if there < here:
        return None
    reach = _REACH.get(release)
    if there > here and (reach is None or there > _PATH_INDEX[reach]):
        return None
    steps: list[tuple[str, TaskState]] = []
    state = current
    for _, trigger in _PATH[here + 1 : there + 1]:
        # The declared machine has the last word on every step.
        state = TaskState(TASK_MACHINE.next_state(state, trigger))
        steps.append((trigger, state))
    return tuple(steps)


#: Every (current, target, release state) -> steps, derived once from the machine: the
#: coordinator consults it for every answer and callback.
_STEPS: dict[tuple[str, str, str], Steps | None] = {
    (cur.value, tgt.value, rel.value): _steps(cur, tgt, rel)
    for cur, _ in _PATH
    for tgt, _ in _PATH
    for rel in ReleaseState
}


def task_steps(current: str, target: str, release_state: str) -> Steps | None:
    """The steps ``(trigger, new state)`` that move a task from ``current`` to ``target``.

    A task service's report may run ahead of the answer the coordinator is waiting for (a
    callback saying ``staged`` before the answer to ``start`` was read). That is not impossible,
    only early: the path is accepted as long as ``target`` is no further than the actions sent
    so far let the service reach, which the release's state tells (``start`` goes out only once
    the release is ``running``, ``publish`` once it is ``publishing``). Returns ``()`` when the
    task is already there and ``None`` when ``target`` is behind ``current``, beyond reach, or
    off the normal path.
    """
    return _STEPS.get((current, target, release_state))


def reachable_task_path(current: str, target: str, release_state: str) -> list[str] | None:
    """The triggers of :func:`task_steps` (``None`` when there is no such path)."""
    steps = task_steps(current, target, release_state)
    return None if steps is None else [trigger for trigger, _ in steps]


def task_state_behind(state: str, than: str) -> bool:
    """True when ``state`` comes before ``than`` on the normal path of a task."""
    if state not in _PATH_INDEX or than not in _PATH_INDEX:
        return False
    return _PATH_INDEX[T(state)] < _PATH_INDEX[T(than)]
