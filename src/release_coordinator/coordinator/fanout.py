"""The fan-out: one action sent to every task of a release at once, transient trouble
retried with backoff, and every answer (or failure) turned into the task's change
(:class:`FanOutMixin`, a part of the Coordinator)."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import attrs

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.coordinator.events import EventsMixin, new_event
from release_coordinator.coordinator.limits import poll_pause
from release_coordinator.coordinator.models import (
    EventKind,
    EventType,
    Release,
    Task,
    TaskService,
    utcnow,
)
from release_coordinator.coordinator.plans import (
    changes_for_answers,
    moves_for_answers,
    task_change,
)
from release_coordinator.coordinator.wire import TaskAction, TaskAnswer, TaskRequest
from release_coordinator.errors import (
    ConcurrentUpdateError,
    PeerAnswerError,
    TransientTransportError,
    TransportError,
)
from release_coordinator.storage.base import TaskChange
from release_coordinator.transports.base import TaskServiceTransport

__all__ = ["FanOutMixin"]


@attrs.frozen
class _Outcome:
    """What one request to one task service ended with."""

    task: Task
    service: TaskService
    answer: TaskAnswer | None = None
    error: TransportError | None = None
    attempts: int = 1


def change_for_outcome(
    release: Release, outcome: _Outcome, action: TaskAction, *, at: datetime
) -> TaskChange | None:
    task = outcome.task
    error = outcome.error
    if error is not None:
        if (
            action is TaskAction.CANCEL
            and isinstance(error, PeerAnswerError)
            and (error.status_code == 404)
        ):
            return task_change(
                release,
                task,
                "cancel",
                message="the service does not know it: nothing to cancel",
                at=at,
            )
        trigger = "reject" if action is TaskAction.INITIALIZE else "fail"
        why = error.message
        if isinstance(error, TransientTransportError) and outcome.attempts > 1:
            why = f"{why} (gave up after {outcome.attempts} attempts)"
        return task_change(release, task, trigger, message=why, type=EventType.ERROR, at=at)
    assert outcome.answer is not None
    return changes_for_answers(release, [task], [outcome.answer], action, at)[0]


class FanOutMixin(EventsMixin):
    """Sends one action to many tasks and records what came of it."""

    transport: TaskServiceTransport
    config: CoordinatorConfig
    _rng: random.Random

    async def _fan_out(
        self, release: Release, tasks: list[Task], action: TaskAction, *, pause: float | None = None
    ) -> float:
        """Send ``action`` to every task's service at once and record the answers.

        Returns the pause before the next step: ``pause`` if given, else the poll interval when
        no task moved (nothing to do but wait), else 0.
        """
        services = {s.id: s for s in await self.store.list_services()}
        release_id, studies = release.id, release.studies
        calls = [
            (services[t.service_id], TaskRequest(action, t.id, release_id, studies)) for t in tasks
        ]
        # First attempt for everyone in one concurrent batch; then only the transient failures
        # are retried (concurrently, each with its own backoff).
        first = await self.transport.send_many(calls)
        if len(first) != len(tasks):
            raise ValueError(f"{len(tasks)} requests sent, {len(first)} results received")
        answers = [r for r in first if isinstance(r, TaskAnswer)]
        if len(answers) == len(first):  # the common case: every service answered
            del calls, first  # (not needed any more: fewer live objects for the collector)
            # One pass over the answers, every event of the batch dated alike.
            now = utcnow()
            uniform = moves_for_answers(release, tasks, answers, action, now)
            if uniform is not None:  # ... all making the same move: one batch of it
                del answers
                from_state, to_state, message, moves, event = uniform
                done = await self.store.move_tasks(
                    from_state, to_state, moves, event, message=message
                )
                self._events_written()
                if pause is not None:
                    return pause
                if any(not isinstance(r, ConcurrentUpdateError) for r in done):
                    return 0
                return poll_pause(self.config, release, tasks)
            found = changes_for_answers(release, tasks, answers, action, now)
            del answers
        else:
            troubled = [i for i, result in enumerate(first) if not isinstance(result, TaskAnswer)]
            settled = await asyncio.gather(
                *(self._settle(release, tasks[i], *calls[i], first[i]) for i in troubled)
            )
            now = utcnow()  # (every event of the batch dated alike)
            outcomes = dict(zip(troubled, settled, strict=True))
            found = []
            for i, (task, result) in enumerate(zip(tasks, first, strict=True)):
                if isinstance(result, TaskAnswer):
                    found += changes_for_answers(release, [task], [result], action, now)
                elif (outcome := outcomes[i]) is not None:
                    found.append(change_for_outcome(release, outcome, action, at=now))
        changes = [change for change in found if change is not None]
        results = await self.store.change_tasks(changes) if changes else []
        self._events_written()
        moved = any(
            not isinstance(r, ConcurrentUpdateError) and c.to_state is not None
            for c, r in zip(changes, results, strict=True)
        )
        if pause is not None:
            return pause
        return 0 if moved else poll_pause(self.config, release, tasks)

    async def _settle(
        self,
        release: Release,
        task: Task,
        service: TaskService,
        request: TaskRequest,
        result: TaskAnswer | TransportError,
    ) -> _Outcome | None:
        """Turn a first attempt's result into an outcome, retrying transient trouble.

        ``None`` when a retry is abandoned because the release moved on meanwhile (canceled,
        say): the task is left as it is, for the release's new phase to deal with.
        """
        attempts = self.config.retry.attempts
        attempt = 1
        while True:
            if isinstance(result, TaskAnswer):
                return _Outcome(task, service, answer=result, attempts=attempt)
            transient = isinstance(result, TransientTransportError)
            last = not transient or attempt == attempts
            if transient:
                counted = f" (attempt {attempt} of {attempts}{'' if last else ', will retry'})"
            else:
                counted = ""
            await self._request_error(
                release,
                task,
                service,
                f"{request.action.value!r} to {service.name!r} failed{counted}: {result.message}",
                EventType.ERROR if last else EventType.WARNING,
            )
            if last:
                return _Outcome(task, service, error=result, attempts=attempt)
            await asyncio.sleep(self.config.retry.delay(attempt, self._rng))
            current = await self.store.get_release(release.id)
            if current.state is not release.state:
                await self._request_error(
                    release,
                    task,
                    service,
                    f"{request.action.value!r} to {service.name!r} not retried: the "
                    f"release is {current.state.value} now",
                )
                return None
            attempt += 1
            try:
                result = await self.transport.send(service, request)
            except TransportError as error:
                result = error

    async def _request_error(
        self,
        release: Release,
        task: Task,
        service: TaskService,
        message: str,
        type: EventType = EventType.INFO,
    ) -> None:
        """Log what became of a request to ``service`` for ``task``."""
        await self._append_event(
            new_event(
                EventKind.REQUEST_ERROR,
                message,
                type=type,
                release_id=release.id,
                task_id=task.id,
                service=service,
            )
        )
