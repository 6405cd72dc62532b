"""The two seams between a process and its peers, as interfaces.

- :class:`TaskServiceTransport`: how the Coordinator reaches a task service (the task-service
  protocol, from the coordinator's side).
- :class:`ParentLink`: how a child (a :class:`~release_coordinator.rollout.relay.Relay` or an
  edge agent) reaches its parent manager (the child protocol, from the child's side).

Adapters: :mod:`.memory` (in-process peers: task services with fault injection, a parent
manager in the same event loop) and :mod:`.http` (httpx).

A task-service transport carries one action to one task service
(:meth:`TaskServiceTransport.send`) and asks a service who it is
(:meth:`TaskServiceTransport.status`). It speaks the wire format of
:mod:`release_coordinator.coordinator.wire` and translates everything that can go wrong
underneath into the library's errors (a parent link does the same):

- a 200 with a body that breaks the protocol: ``MalformedAnswerError``;
- any other real answer (400, 404, 500, 503 ...): ``PeerAnswerError`` with its ``status_code``
  (never retried);
- connection refused/reset/dropped, time-outs, 502/504:
  :class:`~release_coordinator.errors.TransientTransportError` subclasses (retried by the caller).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any

from release_coordinator.coordinator.models import TaskService
from release_coordinator.coordinator.wire import ServiceStatus, TaskAnswer, TaskRequest
from release_coordinator.errors import TransportError
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer

__all__ = ["ParentLink", "TaskServiceTransport"]


class TaskServiceTransport(abc.ABC):
    """Carries task-service protocol requests. Safe to share between concurrent tasks."""

    @abc.abstractmethod
    async def send(self, service: TaskService, request: TaskRequest) -> TaskAnswer:
        """``POST {service.url}/tasks`` with ``request``; the decoded 200 answer.

        Raises a :class:`~release_coordinator.errors.TransportError` subclass as described in
        the module docstring; nothing else.
        """

    @abc.abstractmethod
    async def status(self, service: TaskService) -> ServiceStatus:
        """``GET {service.url}/status``; the decoded 200 answer (errors as for :meth:`send`)."""

    def check_url(self, url: str) -> str | None:
        """What is wrong with ``url`` as a task service address for this transport, or None.

        The coordinator asks before it registers a service, so that a service it could never
        reach is refused up front."""
        return None

    async def send_many(
        self, calls: Sequence[tuple[TaskService, TaskRequest]]
    ) -> list[TaskAnswer | TransportError]:
        """Send every request concurrently; in order, each answer or its TransportError."""

        async def one(service: TaskService, request: TaskRequest) -> TaskAnswer | TransportError:
            try:
                return await self.send(service, request)
            except TransportError as error:
                return error

        return list(await asyncio.gather(*(one(s, r) for s, r in calls)))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close connections. Idempotent."""


class ParentLink(abc.ABC):
    """The child protocol as seen from a child: how a relay (or an agent) talks to its parent."""

    @abc.abstractmethod
    async def poll(
        self, child_id: str, area: dict[str, Any], number_of_children: int
    ) -> PollAnswer:
        """``POST /poll``."""

    @abc.abstractmethod
    async def get_release(self, child_id: str, release_id: str) -> str:
        """``GET /release``: the strategy text."""

    @abc.abstractmethod
    async def get_functions(self, release_id: str, child_id: str = "") -> bytes:
        """``GET /release/functions/{id}``: the archive. ``child_id`` (the caller's id, an
        extra the protocol's request lacks) lets the parent count the call as the child being
        seen; old parents ignore it."""

    @abc.abstractmethod
    async def submit_result(self, body: dict[str, Any]) -> str:
        """``POST /result``: the answer's ``action`` (``"rollback"`` when the release's rollout
        was aborted; ``""`` otherwise, and from parents that do not say)."""

    @abc.abstractmethod
    async def end_stage(self, child_id: str, strategy_id: str, stage_name: str) -> EndStageAnswer:
        """``POST /end_stage``."""
