"""How a task service's report or answer changes a task: the plans, decided once per
combination of states and cached, and the :class:`~release_coordinator.storage.base.TaskChange`
records they make (pure functions: no I/O, no coordinator state).

The hot path of every fan-out is :func:`changes_for_answers` (and :func:`moves_for_answers`,
when every answer makes the same move): what an answer does to a task depends only on the
task's state, the reported state, the release's state and the action.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    Release,
    Task,
    utcnow,
)
from release_coordinator.coordinator.wire import TaskAction, TaskAnswer
from release_coordinator.errors import InvalidTransitionError
from release_coordinator.fsm.release import (
    TASK_MACHINE,
    ReleaseState,
    TaskState,
    task_state_behind,
    task_steps,
)
from release_coordinator.storage.base import StepEvent, TaskChange, step_event

__all__ = [
    "Plan",
    "answer_plan",
    "apply_plan",
    "cached_answer_plan",
    "change_for_report",
    "changes_for_answers",
    "moves_for_answers",
    "refused_report",
    "report_plan",
    "task_change",
    "trigger_plan",
]

RS = ReleaseState
TS = TaskState

#: The state a task service's reported state stands for on the normal path.
_REPORTED_TO_TASK = {
    "pending": TS.INITIALIZED,
    "running": TS.RUNNING,
    "staged": TS.STAGED,
    "publishing": TS.PUBLISHING,
    "published": TS.PUBLISHED,
}
_BAD_REPORTS = frozenset({"failed", "canceled", "rejected"})
_KNOWN_REPORTS = _BAD_REPORTS | frozenset(_REPORTED_TO_TASK)


class Plan(NamedTuple):
    """How a report changes a task, whatever its ids and figures (see ``report_plan``).

    ``to_state`` ``None`` is a progress report (a change only if the figure is new); ``steps``
    are the states passed through, each with its event's type and the end of its message;
    ``message`` is written to the task; ``with_progress`` says whether the reported progress
    is written too.
    """

    to_state: TaskState | None
    from_states: frozenset[TaskState]
    #: Per state passed through: its event's type, the end of its message, the state's value.
    steps: tuple[tuple[EventType, str, str], ...]
    message: str | None
    with_progress: bool
    #: The same, unpacked, for a plan of exactly one step (the common case), else None.
    single: _Single | None


_Single = tuple[frozenset[TaskState], TaskState, EventType, str, str, str | None, bool]


def _plan(
    to_state: TaskState | None,
    from_state: TaskState,
    steps: Iterable[tuple[TaskState, EventType, str]],
    message: str | None = None,
    with_progress: bool = True,
) -> Plan:
    """A plan; ``steps`` are (state, event type, detail after the state in the message)."""
    from_states = _FROM[from_state]
    events = tuple(
        (type, f" is {state.value}{detail}", state.value) for state, type, detail in steps
    )
    single = None
    if to_state is not None and len(events) == 1:
        type, suffix, value = events[0]
        single = (from_states, to_state, type, suffix, value, message, with_progress)
    return Plan(to_state, from_states, events, message, with_progress, single)


#: The compare-and-set expectation of a change from each state (shared: they never change).
_FROM = {state: frozenset({state}) for state in TaskState}


#: Decided plans for answers: (task state, reported state, release state, action) -> plan.
_ANSWER_PLANS: dict[tuple[TaskState, str, ReleaseState, TaskAction], Plan | None] = {}
_UNDECIDED = Plan(None, frozenset(), (), "undecided", False, None)
_NO_SINGLE: _Single = (frozenset(), TaskState.WAITING, EventType.INFO, "", "", None, False)


def changes_for_answers(
    release: Release,
    tasks: Sequence[Task],
    answers: Sequence[TaskAnswer],
    action: TaskAction,
    at: datetime,
) -> list[TaskChange | None]:
    """The change each answer calls for (``None``: none), in order; events are dated ``at``.

    The hot path of every fan-out: what an answer does to a task depends only on the task's
    state, the reported state, the release's state and the action, so it is decided once
    per such combination (:func:`answer_plan`) and only applied per answer.
    """
    plans = _ANSWER_PLANS
    release_id = release.id
    release_state = release.state
    check_ids = action is not TaskAction.CANCEL  # (cancel is judged by its state alone)
    changes: list[TaskChange | None] = []
    append = changes.append
    # The plan of the previous answer, and its single step unpacked: most answers of a
    # batch report the same for tasks in the same state.
    plan: Plan | None = _UNDECIDED
    last_state: TaskState | None = None
    last_reported = ""
    single: _Single | None = None
    from_states, to_state, type_, suffix, value, message, with_progress = _NO_SINGLE
    for task, answer in zip(tasks, answers, strict=True):
        task_id = task.id
        if check_ids and (answer.task_id != task_id or answer.release_id != release_id):
            append(
                task_change(
                    release,
                    task,
                    "reject" if action is TaskAction.INITIALIZE else "fail",
                    type=EventType.ERROR,
                    message=f"the service answered for task {answer.task_id!r} of release "
                    f"{answer.release_id!r}",
                    at=at,
                )
            )
            continue
        state, reported = task.state, answer.state
        if state is not last_state or reported != last_reported or plan is _UNDECIDED:
            plan = plans.get((state, reported, release_state, action), _UNDECIDED)
            if plan is _UNDECIDED:
                plan = cached_answer_plan(release, task, reported, action)
            last_state, last_reported = state, reported
            single = None if plan is None else plan.single
            if single is not None:
                from_states, to_state, type_, suffix, value, message, with_progress = single
        if single is not None:  # the common case, inline
            event = step_event(type_, suffix, value, release_id, task_id, task.service_id, at)
            append(
                TaskChange(
                    task_id,
                    from_states,
                    to_state,
                    (event,),
                    answer.progress if with_progress else None,
                    message,
                )
            )
        elif plan is None:
            append(None)
        else:
            append(apply_plan(plan, release, task, answer.progress, at))
    return changes


def moves_for_answers(
    release: Release,
    tasks: Sequence[Task],
    answers: Sequence[TaskAnswer],
    action: TaskAction,
    at: datetime,
) -> tuple[TaskState, TaskState, str | None, list[tuple[Task, int | None]], StepEvent] | None:
    """When every answer moves its task the same one step (the common case): the move,
    ``(from_state, to_state, message, moves, event)``, for
    :meth:`CoordinatorStore.move_tasks`, making the changes :func:`changes_for_answers`
    would; else None."""
    if not tasks:
        return None
    state, reported = tasks[0].state, answers[0].state
    plan = cached_answer_plan(release, tasks[0], reported, action)
    if plan is None or plan.single is None:
        return None
    _, to_state, type_, suffix, value, message, with_progress = plan.single
    release_id = release.id
    check_ids = action is not TaskAction.CANCEL  # (cancel is judged by its state alone)
    moves: list[tuple[Task, int | None]] = []
    append = moves.append
    for task, answer in zip(tasks, answers, strict=True):
        if (
            task.state is not state
            or answer.state != reported
            or (check_ids and (answer.task_id != task.id or answer.release_id != release_id))
        ):
            return None  # not all alike: the general way
        append((task, answer.progress if with_progress else None))
    return state, to_state, message, moves, StepEvent(type_, suffix, value, release_id, at)


def cached_answer_plan(
    release: Release, task: Task, reported: str, action: TaskAction
) -> Plan | None:
    """:func:`answer_plan`, decided once per (task state, report, release state, action)."""
    key = (task.state, reported, release.state, action)
    plan = _ANSWER_PLANS.get(key, _UNDECIDED)
    if plan is _UNDECIDED:
        plan = answer_plan(release, task, reported, action)
        if reported in _KNOWN_REPORTS:  # (the cache stays small whatever comes)
            _ANSWER_PLANS[key] = plan
    return plan


def answer_plan(release: Release, task: Task, reported: str, action: TaskAction) -> Plan | None:
    """What an answer reporting ``reported`` to ``action`` does to ``task`` (ids checked)."""
    if action is TaskAction.CANCEL:
        if reported == "canceled":
            return trigger_plan(task, "cancel")
        return trigger_plan(
            task,
            "fail",
            type=EventType.ERROR,
            message=f"the service answered 'cancel' with {reported!r}",
            with_progress=False,
        )
    return report_plan(release, task, reported, callback=False, action=action)


def change_for_report(
    release: Release,
    task: Task,
    reported: str,
    progress: int | None,
    *,
    callback: bool,
    action: TaskAction | None = None,
) -> TaskChange | None:
    """The change a reported state calls for; ``None`` when it changes nothing.

    For callbacks an impossible report raises InvalidTransitionError; for answers, which
    may arrive late, a report behind the task is ignored.
    """
    plan = report_plan(release, task, reported, callback=callback, action=action)
    return apply_plan(plan, release, task, progress, utcnow())


def report_plan(
    release: Release,
    task: Task,
    reported: str,
    *,
    callback: bool,
    action: TaskAction | None = None,
) -> Plan | None:
    """The decision of :func:`change_for_report`. It depends on the states only (the
    ids go into the errors raised for callbacks), so that answers can share it."""
    source = "callback" if callback else f"answer to {action.value!r}" if action else "report"
    if reported in _BAD_REPORTS:
        if task.is_finished:
            return None
        if reported == "canceled" and release.state is RS.CANCELING:
            return trigger_plan(task, "cancel")
        trigger = "reject" if (reported == "rejected" and task.state is TS.WAITING) else "fail"
        return trigger_plan(
            task,
            trigger,
            type=EventType.ERROR,
            message=f"the service reported {reported!r} ({source})",
        )
    target = _REPORTED_TO_TASK.get(reported)
    if target is None or task.is_finished or release.state is RS.CANCELING:
        if callback:
            raise refused_report(
                task,
                reported,
                "the task is finished"
                if task.is_finished
                else (f"release {release.id} is {release.state.value!r}"),
            )
        return None
    steps = task_steps(task.state, target, release.state)
    if steps is None:
        if not callback and task_state_behind(target, task.state):
            return None  # a late answer: the task has moved on already
        if callback:
            raise refused_report(
                task,
                reported,
                f"{reported!r} is not reachable from {task.state.value!r} while release "
                f"{release.id} is {release.state.value!r}",
            )
        return trigger_plan(
            task,
            "reject" if task.state is TS.WAITING else "fail",
            type=EventType.ERROR,
            message=f"the service reported {reported!r}, which a {task.state} task "
            f"cannot reach ({source})",
        )
    if not steps:  # a progress report, if the figure is new
        return _plan(None, task.state, ())
    detail = f" ({source})"
    return _plan(steps[-1][1], task.state, ((state, EventType.INFO, detail) for _, state in steps))


def refused_report(task: Task, reported: str, hint: str) -> InvalidTransitionError:
    """The error for a callback reporting ``reported`` that ``task`` cannot take."""
    return InvalidTransitionError(
        "task", task.state.value, f"report {reported}", subject=task.id, hint=hint
    )


def trigger_plan(
    task: Task,
    trigger: str,
    *,
    message: str | None = None,
    type: EventType = EventType.INFO,
    with_progress: bool = True,
) -> Plan:
    """Fire ``trigger`` on the task (InvalidTransitionError if the machine refuses it)."""
    dest = TaskState(TASK_MACHINE.next_state(task.state, trigger, subject=task.id))
    detail = f": {message}" if message else ""
    return _plan(dest, task.state, ((dest, type, detail),), message, with_progress)


def apply_plan(
    plan: Plan | None,
    release: Release,
    task: Task,
    progress: int | None,
    at: datetime,
) -> TaskChange | None:
    """The change ``plan`` makes to ``task``, its events dated ``at``."""
    if plan is None:
        return None
    if not plan.with_progress:
        progress = None
    if plan.to_state is None:
        if progress is None or progress == task.progress:
            return None
        return TaskChange(
            task.id,
            plan.from_states,
            None,
            events=(
                Event(
                    EventType.INFO,
                    EventKind.PROGRESS,
                    f"task {task.id} on {task.service_id} at {progress}%",
                    release.id,
                    task.id,
                    task.service_id,
                    at=at,
                ),
            ),
            progress=progress,
        )
    return TaskChange(
        task.id,
        plan.from_states,
        plan.to_state,
        events=tuple(
            step_event(type, suffix, value, release.id, task.id, task.service_id, at)
            for type, suffix, value in plan.steps
        ),
        progress=progress,
        message=plan.message,
    )


def task_change(
    release: Release,
    task: Task,
    trigger: str,
    *,
    message: str | None = None,
    progress: int | None = None,
    type: EventType = EventType.INFO,
    at: datetime | None = None,
) -> TaskChange:
    plan = trigger_plan(task, trigger, message=message, type=type)
    change = apply_plan(plan, release, task, progress, utcnow() if at is None else at)
    assert change is not None  # (a plan that moves the task always changes it)
    return change
