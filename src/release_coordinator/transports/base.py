"""The transport interface: how the Coordinator reaches a task service.

A transport carries one action to one task service (:meth:`TaskServiceTransport.send`) and asks
a service who it is (:meth:`TaskServiceTransport.status`). It speaks the wire format of
:mod:`release_coordinator.wire` and translates everything that can go wrong underneath into the
library's errors:

- a 200 with a body that breaks the protocol: ``MalformedAnswerError``;
- any other real answer (400, 404, 500, 503 ...): ``PeerAnswerError`` with its ``status_code``
  (never retried);
- connection refused/reset/dropped, time-outs, 502/504:
  :class:`~release_coordinator.errors.TransientTransportError` subclasses (retried by the caller).

Adapters: :mod:`.memory` (in-process task services, with fault injection) and :mod:`.http`
(httpx).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence

from release_coordinator.errors import TransportError
from release_coordinator.models import TaskService
from release_coordinator.wire import ServiceStatus, TaskAnswer, TaskRequest

__all__ = ["TaskServiceTransport"]


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
