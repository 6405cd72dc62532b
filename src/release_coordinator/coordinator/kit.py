"""The task-service kit: the other side of the task-service protocol.

A consumer of release data writes what staging, publishing and canceling mean for it, and the
kit does the protocol: it keeps the state of every task, answers every action as the protocol
says (idempotently: a repeated action answers the current state), runs the work in the
background, reports progress, and can push state changes back to the coordinator.

Subclass and override the hooks::

    class SearchIndex(TaskServiceKit):
        async def stage(self, task: KitTask) -> None:
            for i, study in enumerate(task.studies):
                await build_index(study)
                await task.report_progress(100 * (i + 1) // len(task.studies))

        async def publish(self, task: KitTask) -> None:
            await swap_alias("live", task.release_id)

or pass callables: ``TaskServiceKit("search", stage=build, publish=swap)``.

A kit is an :class:`~release_coordinator.transports.memory.InProcessService`: add it to a
:class:`~release_coordinator.transports.memory.MemoryTransport`, or serve it over HTTP with the
server extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import attrs

from release_coordinator.coordinator.models import utcnow
from release_coordinator.coordinator.wire import (
    ServiceStatus,
    TaskAction,
    TaskAnswer,
    decode_request,
)
from release_coordinator.errors import ValidationError

__all__ = ["KitTask", "Notifier", "TaskServiceKit", "TaskWork"]

log = logging.getLogger(__name__)

#: Pushes ``(task_id, release_id, state, progress)`` to the coordinator.
Notifier = Callable[[str, str, str, int], Awaitable[Any]]

#: The shape of a stage/publish/cancel hook passed as a callable.
TaskWork = Callable[["KitTask"], Awaitable[None]]


@attrs.define(eq=False)
class KitTask:
    """A task as the task service holds it. Hooks read it and report progress through it."""

    task_id: str
    release_id: str
    studies: tuple[str, ...]
    state: str = "pending"
    progress: int = 0
    message: str = ""
    submitted_at: datetime = attrs.Factory(utcnow)
    kit: TaskServiceKit | None = attrs.field(default=None, repr=False)
    _submitted: datetime | None = attrs.field(default=None, init=False, repr=False)
    _submitted_iso: str = attrs.field(default="", init=False, repr=False)

    async def report_progress(self, progress: int) -> None:
        """Record progress (0..100) and push it to the coordinator if the kit is connected."""
        self.progress = max(0, min(100, int(progress)))
        if self.kit is not None:
            await self.kit.notify(self)

    def answer(self, name: str) -> TaskAnswer:
        return TaskAnswer(
            task_id=self.task_id,
            release_id=self.release_id,
            state=self.state,
            progress=self.progress,
            name=name,
            date_submitted=self._submitted_text(),
        )

    def answer_json(self, name: str) -> dict[str, Any]:
        """``answer(name).to_json()``, without the record in between (every action's answer)."""
        body: dict[str, Any] = {
            "task_id": self.task_id,
            "release_id": self.release_id,
            "state": self.state,
            "progress": self.progress,
        }
        if name:
            body["name"] = name
        body["date_submitted"] = self._submitted_text()
        return body

    def _submitted_text(self) -> str:
        """``submitted_at`` in ISO 8601, formatted once (until it is changed)."""
        if self._submitted is not self.submitted_at:
            self._submitted, self._submitted_iso = self.submitted_at, self.submitted_at.isoformat()
        return self._submitted_iso


_FINISHED = frozenset({"canceled", "failed", "rejected"})


class TaskServiceKit:
    """A task service's protocol logic; override :meth:`stage`, :meth:`publish`,
    :meth:`cancel` (and :meth:`accept` to reject tasks), or pass them as callables.

    ``notifier`` pushes every state change and progress report to the coordinator (see
    :meth:`connect`); without one, the coordinator learns state by polling.
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "1.0",
        stage: TaskWork | None = None,
        publish: TaskWork | None = None,
        cancel: TaskWork | None = None,
        accept: Callable[[KitTask], Awaitable[bool]] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.healthy = True
        self.message = "ready"
        self.notifier = notifier
        self.tasks: dict[str, KitTask] = {}
        self._stage_fn = stage
        self._publish_fn = publish
        self._cancel_fn = cancel
        self._accept_fn = accept
        self._jobs: dict[str, asyncio.Task[None]] = {}

    # -- hooks -------------------------------------------------------------------------------
    async def accept(self, task: KitTask) -> bool:
        """Whether to take a new task at ``initialize`` (False answers 503: rejected)."""
        return True if self._accept_fn is None else await self._accept_fn(task)

    async def stage(self, task: KitTask) -> None:
        """Fetch and stage the release's data, out of public sight. Raise to fail the task."""
        if self._stage_fn is not None:
            await self._stage_fn(task)

    async def publish(self, task: KitTask) -> None:
        """Make the staged data public. Raise to fail the task."""
        if self._publish_fn is not None:
            await self._publish_fn(task)

    async def cancel(self, task: KitTask) -> None:
        """Drop what was staged (or undo a publish). Called once per task."""
        if self._cancel_fn is not None:
            await self._cancel_fn(task)

    # -- coordinator link --------------------------------------------------------------------
    def connect(self, notifier: Notifier) -> None:
        """Push state to the coordinator, e.g. ``kit.connect(coordinator.report_task_state)``."""
        self.notifier = notifier

    async def notify(self, task: KitTask) -> None:
        if self.notifier is None:
            return
        try:
            await self.notifier(task.task_id, task.release_id, task.state, task.progress)
        except Exception as error:  # the coordinator polls anyway; a refused push is not fatal
            log.info("%s: push of %s %s refused: %s", self.name, task.task_id, task.state, error)

    # -- protocol ----------------------------------------------------------------------------
    async def handle_status(self) -> tuple[int, Any]:
        """``GET /status``: 200 with who we are, or 503 when :attr:`healthy` is False."""
        message = self.message if self.healthy else "unavailable"
        status = ServiceStatus(self.name, message, self.version).to_json()
        return (200 if self.healthy else 503), status

    async def handle_task(self, body: Any) -> tuple[int, Any]:
        """``POST /tasks``: one action, answered per the protocol."""
        try:
            request = decode_request(body)
        except ValidationError as error:
            return 400, error.to_dict()
        task = self.tasks.get(request.task_id)
        if request.action is TaskAction.INITIALIZE:
            if task is None:
                task = KitTask(request.task_id, request.release_id, request.studies, kit=self)
                if not await self.accept(task):
                    return 503, {"message": f"{self.name} rejects task {request.task_id}"}
                self.tasks[task.task_id] = task
            return self._answer(task)
        if task is None or task.release_id != request.release_id:
            return 404, {"message": f"unknown task {request.task_id!r}"}
        if request.action is TaskAction.START:
            if task.state == "pending":
                self._run(task, "running", self.stage, "staged")
        elif request.action is TaskAction.PUBLISH:
            if task.state == "staged":
                task.progress = 0
                self._run(task, "publishing", self.publish, "published")
            elif task.state not in ("publishing", "published"):
                return 400, {"message": f"task {task.task_id} is {task.state}, not staged"}
        elif request.action is TaskAction.CANCEL:
            await self._do_cancel(task)
        return self._answer(task)

    def _answer(self, task: KitTask) -> tuple[int, Any]:
        return 200, task.answer_json(self.name)

    def _run(
        self,
        task: KitTask,
        state: str,
        hook: Callable[[KitTask], Awaitable[None]],
        done: str,
    ) -> None:
        """Move ``task`` to ``state`` and run ``hook`` for it in a job of its own."""
        task.state = state
        loop = asyncio.get_running_loop()
        self._jobs[task.task_id] = loop.create_task(self._kit_job(task, hook, done))

    async def _kit_job(
        self, task: KitTask, hook: Callable[[KitTask], Awaitable[None]], done: str
    ) -> None:
        """A job: ``hook``, then ``done`` (or ``failed``), then a push to the coordinator."""
        try:
            try:
                await hook(task)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: task %s failed: %s", self.name, task.task_id, error)
                task.state, task.message = "failed", f"{type(error).__name__}: {error}"
            else:
                task.state, task.progress = done, 100
            await self.notify(task)
        finally:
            # Forgotten when it ends (a newer job of the task may have taken its place); one
            # canceled before it ever ran is forgotten by whoever canceled it.
            if self._jobs.get(task.task_id) is asyncio.current_task():
                del self._jobs[task.task_id]

    async def _do_cancel(self, task: KitTask) -> None:
        if task.state in _FINISHED:
            return
        job = self._jobs.pop(task.task_id, None)
        if job is not None:
            job.cancel()
        task.state = "canceled"
        try:
            await self.cancel(task)
        except Exception as error:  # the task is canceled either way; say what went wrong
            log.warning("%s: cancel hook of %s failed: %s", self.name, task.task_id, error)
            task.message = f"cancel hook failed: {error}"

    async def aclose(self) -> None:
        """Stop every background job (a host shutting down)."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
