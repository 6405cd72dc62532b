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

#: The furthest state a task service may report while the release is in a given state: what
#: the actions the coordinator may have sent so far let it reach.
_REACH = {
    ReleaseState.INITIALIZING: T.INITIALIZED,
    ReleaseState.RUNNING: T.STAGED,
    ReleaseState.STAGED: T.STAGED,
    ReleaseState.PUBLISHING: T.PUBLISHED,
}


def reachable_task_path(current: str, target: str, release_state: str) -> list[str] | None:
    """Triggers that move a task from ``current`` to ``target`` along the normal path.

    A task service's report may run ahead of the answer the coordinator is waiting for (a
    callback saying ``staged`` before the answer to ``start`` was read). That is not impossible,
    only early: this returns the triggers of every step between, as long as ``target`` is no
    further than the actions sent so far let the service reach, which the release's state tells
    (``start`` goes out only once the release is ``running``, ``publish`` once it is
    ``publishing``). It returns ``[]`` when the task is already there and ``None`` when
    ``target`` is behind ``current`` or beyond reach.
    """
    if current not in _PATH_INDEX or target not in _PATH_INDEX:
        return None
    here, there = _PATH_INDEX[T(current)], _PATH_INDEX[T(target)]
    if there < here:
        return None
    if there == here:
        return []
    reach = _REACH.get(ReleaseState(release_state)) if release_state in _RELEASE_STATES else None
    if reach is None or there > _PATH_INDEX[reach]:
        return None
    return [trigger for _, trigger in _PATH[here + 1 : there + 1]]


_RELEASE_STATES = frozenset(s.value for s in ReleaseState)


def task_state_behind(state: str, than: str) -> bool:
    """True when ``state`` comes before ``than`` on the normal path of a task."""
    if state not in _PATH_INDEX or than not in _PATH_INDEX:
        return False
    return _PATH_INDEX[T(state)] < _PATH_INDEX[T(than)]
