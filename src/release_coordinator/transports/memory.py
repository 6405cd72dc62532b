"""In-process task services, with latency and fault injection.

:class:`MemoryTransport` delivers requests to task services that live in the same process
(anything with the :class:`InProcessService` shape, such as
:class:`~release_coordinator.coordinator.kit.TaskServiceKit`), addressed by a ``memory://`` URL. It
passes the same JSON values as HTTP would (fresh for every request, decoded as strictly), so a
service sees what it would over the network, and it is a real adapter: use it to embed task
services in one program, or to test the coordinator (or your own task service) against
latency, errors, time-outs and dropped connections::

    transport = MemoryTransport()
    transport.add("memory://search", SearchIndexTaskService())
    transport.inject("memory://search", Fault.status(500), action="initialize")
    transport.set_latency("memory://search", 0.02)
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs

from release_coordinator.coordinator.models import TaskService
from release_coordinator.coordinator.wire import (
    ServiceStatus,
    TaskAnswer,
    TaskRequest,
    decode_answer,
    decode_status,
)
from release_coordinator.errors import (
    BadGatewayError,
    ConfigurationError,
    MalformedAnswerError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    TransportError,
    ValidationError,
)
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer
from release_coordinator.transports.base import ParentLink, TaskServiceTransport

if TYPE_CHECKING:
    from release_coordinator.rollout.manager import RolloutManager

__all__ = ["Fault", "InProcessParent", "InProcessService", "MemoryTransport", "SentRequest"]


@runtime_checkable
class InProcessService(Protocol):
    """A task service reachable in process: JSON-like bodies in, ``(status, body)`` out."""

    async def handle_task(self, body: Any) -> tuple[int, Any]: ...

    async def handle_status(self) -> tuple[int, Any]: ...


FaultKind = Literal["status", "timeout", "refuse", "drop", "malformed"]


@attrs.frozen
class Fault:
    """Something that goes wrong with one request.

    - ``status(code)``: the service's answer is replaced by ``code`` (it never sees the request);
    - ``timeout()``: no answer before the transport's time-out (the service does see it);
    - ``refuse()``: connection refused (the service never sees it);
    - ``drop()``: the service handles the request, and the connection drops before the answer;
    - ``malformed()``: a 200 whose body breaks the protocol (the service does see it).
    """

    kind: FaultKind
    status_code: int = 0

    @classmethod
    def status(cls, code: int) -> Fault:
        if not 100 <= code <= 599 or code == 200:
            raise ConfigurationError(f"a fault status must be a non-200 HTTP status, not {code}")
        return cls("status", code)

    @classmethod
    def timeout(cls) -> Fault:
        return cls("timeout")

    @classmethod
    def refuse(cls) -> Fault:
        return cls("refuse")

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")


@attrs.define
class _Injected:
    fault: Fault
    action: str | None
    remaining: int | None  # None: every matching request


@attrs.frozen
class SentRequest:
    """One request as the transport carried it (``action`` is ``"status"`` for health checks)."""

    url: str
    action: str
    task_id: str
    release_id: str
    fault: FaultKind | None


@attrs.define
class _Endpoint:
    service: InProcessService
    latency: float = 0.0
    faults: list[_Injected] = attrs.Factory(list)


class MemoryTransport(TaskServiceTransport):
    """Delivers requests to in-process task services (see the module docstring).

    ``timeout`` is the per-request time-out in seconds. Every request is appended to
    :attr:`sent` (disable with ``record=False``) and passed to every ``on_send`` listener before
    it is delivered.
    """

    def __init__(self, *, timeout: float = 10.0, record: bool = True) -> None:
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        self.timeout = timeout
        self.record = record
        self.sent: list[SentRequest] = []
        self._listeners: list[Callable[[SentRequest], None]] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()

    # -- wiring ------------------------------------------------------------------------------
    def add(self, url: str, service: InProcessService, *, latency: float = 0.0) -> str:
        """Serve ``service`` at ``url`` (``memory://name``); returns the url."""
        if (problem := self.check_url(url)) is not None:
            raise ConfigurationError(problem)
        if not isinstance(service, InProcessService):
            raise ConfigurationError(
                f"{service!r} is not an in-process service (handle_task, handle_status)"
            )
        with self._lock:
            self._endpoints[url] = _Endpoint(service, latency)
        return url

    def remove(self, url: str) -> None:
        """Stop serving ``url``: requests to it are refused from now on."""
        with self._lock:
            self._endpoints.pop(url, None)

    def service_at(self, url: str) -> InProcessService:
        with self._lock:
            return self._endpoint(url).service

    def set_latency(self, url: str, seconds: float) -> None:
        """Every round trip to ``url`` takes ``seconds``: the service handles the request half
        way, and the answer arrives ``seconds`` after the request was sent."""
        if seconds < 0:
            raise ConfigurationError("latency cannot be negative")
        with self._lock:
            self._endpoint(url).latency = seconds

    def inject(
        self, url: str, fault: Fault, *, action: str | None = None, times: int | None = 1
    ) -> None:
        """Make the next ``times`` requests to ``url`` (of ``action`` only, when given; the
        health check is action ``"status"``) fail with ``fault``; ``times=None``: all of them.
        Faults are used up in the order they were injected."""
        if times is not None and times < 1:
            raise ConfigurationError("times must be at least 1 (or None for always)")
        with self._lock:
            self._endpoint(url).faults.append(_Injected(fault, action, times))

    def clear_faults(self, url: str | None = None) -> None:
        with self._lock:
            for key, endpoint in self._endpoints.items():
                if url is None or key == url:
                    endpoint.faults.clear()

    def on_send(self, listener: Callable[[SentRequest], None]) -> None:
        """Call ``listener`` with every request, before it is delivered."""
        self._listeners.append(listener)

    def _endpoint(self, url: str) -> _Endpoint:
        try:
            return self._endpoints[url]
        except KeyError:
            raise PeerUnreachableError(
                f"nothing serves {url!r} in this process", peer=url
            ) from None

    def _take_fault(self, endpoint: _Endpoint, action: str) -> Fault | None:
        with self._lock:
            for injected in endpoint.faults:
                if injected.action is None or injected.action == action:
                    if injected.remaining is not None:
                        injected.remaining -= 1
                        if injected.remaining == 0:
                            endpoint.faults.remove(injected)
                    return injected.fault
        return None

    # -- delivery ----------------------------------------------------------------------------
    def _dispatch(
        self, url: str, action: str, task_id: str, release_id: str
    ) -> tuple[_Endpoint | None, Fault | None]:
        """Decide a request's fate and record it as sent, synchronously: what the caller
        decided to send is recorded in the same step as the decision."""
        with self._lock:
            endpoint = self._endpoints.get(url)
        return self._dispatch_to(endpoint, url, action, task_id, release_id)

    def _dispatch_to(
        self, endpoint: _Endpoint | None, url: str, action: str, task_id: str, release_id: str
    ) -> tuple[_Endpoint | None, Fault | None]:
        if endpoint is None:
            self._note(SentRequest(url, action, task_id, release_id, "refuse"))
            return None, None
        fault = self._take_fault(endpoint, action) if endpoint.faults else None
        if self.record or self._listeners:
            self._note(
                SentRequest(url, action, task_id, release_id, None if fault is None else fault.kind)
            )
        return endpoint, fault

    async def _deliver(
        self, url: str, action: str, task_id: str, release_id: str, body: Any
    ) -> tuple[int, Any]:
        endpoint, fault = self._dispatch(url, action, task_id, release_id)
        return await self._complete(url, endpoint, fault, body)

    async def _complete(
        self, url: str, endpoint: _Endpoint | None, fault: Fault | None, body: Any
    ) -> tuple[int, Any]:
        if endpoint is None or (fault is not None and fault.kind == "refuse"):
            raise PeerUnreachableError(f"connection refused by {url}", peer=url)
        if fault is not None and fault.kind == "timeout":
            await self._call(endpoint, body)
            await asyncio.sleep(self.timeout)
            raise PeerTimeoutError(f"{url} did not answer within {self.timeout:g}s", peer=url)
        if endpoint.latency > self.timeout:
            await asyncio.sleep(self.timeout)
            raise PeerTimeoutError(f"{url} did not answer within {self.timeout:g}s", peer=url)
        loop = asyncio.get_running_loop()
        answer_at = loop.time() + endpoint.latency
        if endpoint.latency:  # the request travels half the round trip ...
            await asyncio.sleep(endpoint.latency / 2)
        if fault is not None and fault.kind == "status":
            status, answer = fault.status_code, {"message": "injected fault"}
        else:
            status, answer = await self._call(endpoint, body)
        if endpoint.latency:  # ... and the answer is back one round trip after the request
            await asyncio.sleep(max(0.0, answer_at - loop.time()))
        if fault is not None and fault.kind == "drop":
            raise PeerUnreachableError(f"connection to {url} dropped before the answer", peer=url)
        if fault is not None and fault.kind == "malformed":
            return 200, {"unexpected": True}
        return status, answer

    async def _call(self, endpoint: _Endpoint, body: Any) -> tuple[int, Any]:
        # Bodies are fresh JSON values built for this request (nothing is shared between the
        # two sides), and both sides decode them as strictly as they would over HTTP.
        if body is None:
            return await endpoint.service.handle_status()
        return await endpoint.service.handle_task(body)

    def _note(self, sent: SentRequest) -> None:
        if self.record:
            self.sent.append(sent)
        for listener in self._listeners:
            listener(sent)

    async def send(self, service: TaskService, request: TaskRequest) -> TaskAnswer:
        url = service.url
        status, body = await self._deliver(
            url, request.action.value, request.task_id, request.release_id, request.to_json()
        )
        return self._decode(url, request, status, body)

    async def send_many(
        self, calls: Sequence[tuple[TaskService, TaskRequest]]
    ) -> list[TaskAnswer | TransportError]:
        """Send every request concurrently; in order, each answer or its TransportError.

        Requests to services with no pending fault are grouped by latency: each group travels
        together and is handled in order, which is what concurrent in-process services amount
        to, without one asyncio task per request.
        """
        results: list[TaskAnswer | TransportError | None] = [None] * len(calls)
        groups: dict[float, list[int]] = {}  # latency -> indexes of the calls
        singles: list[tuple[int, _Endpoint | None, Fault | None]] = []
        # Every request is decided and recorded before the first suspension, in the same step
        # as the caller's decision to send it.
        endpoints: list[_Endpoint | None]
        if self._listeners:  # a listener may rewire the transport between two requests
            endpoints = [None] * len(calls)
        else:  # nothing runs between two requests: look every endpoint up at once
            with self._lock:
                endpoints = [self._endpoints.get(service.url) for service, _ in calls]
        timeout = self.timeout
        quiet = not self.record and not self._listeners  # nothing to note
        fault: Fault | None
        last_latency, last_group = None, None  # (consecutive calls mostly share a latency)
        for i, (service, request) in enumerate(calls):
            endpoint = endpoints[i]
            if endpoint is not None and quiet and not endpoint.faults:
                fault = None
            elif endpoint is None:
                endpoint, fault = self._dispatch(
                    service.url, request.action.value, request.task_id, request.release_id
                )
                endpoints[i] = endpoint
            else:
                endpoint, fault = self._dispatch_to(
                    endpoint, service.url, request.action.value, request.task_id, request.release_id
                )
            if endpoint is None or fault is not None or endpoint.latency > timeout:
                singles.append((i, endpoint, fault))
            elif endpoint.latency == last_latency and last_group is not None:
                last_group.append(i)
            else:
                last_latency = endpoint.latency
                last_group = groups.setdefault(last_latency, [])
                last_group.append(i)

        async def group(latency: float, members: list[int]) -> None:
            loop = asyncio.get_running_loop()
            answer_at = loop.time() + latency
            if latency:
                await asyncio.sleep(latency / 2)
            # (what _call does for a request, without a coroutine of its own per request)
            answers: list[tuple[int, Any]] = []
            for i in members:
                endpoint = endpoints[i]
                assert endpoint is not None  # (grouped calls have one)
                answers.append(await endpoint.service.handle_task(calls[i][1].to_json()))
            if latency:
                await asyncio.sleep(max(0.0, answer_at - loop.time()))
            answers.reverse()  # (each is dropped as it is read: fewer live objects at a time)
            for i in members:
                status, body = answers.pop()
                if status == 200:  # the common case, without the detours of _decode
                    try:
                        results[i] = decode_answer(body)
                        continue
                    except ValidationError:
                        pass  # _decode says what is wrong with it
                service, request = calls[i]
                try:
                    results[i] = self._decode(service.url, request, status, body)
                except TransportError as error:
                    results[i] = error

        async def single(i: int, endpoint: _Endpoint | None, fault: Fault | None) -> None:
            service, request = calls[i]
            try:
                status, body = await self._complete(service.url, endpoint, fault, request.to_json())
                results[i] = self._decode(service.url, request, status, body)
            except TransportError as error:
                results[i] = error

        await asyncio.gather(
            *(group(latency, members) for latency, members in groups.items()),
            *(single(*entry) for entry in singles),
        )
        return [r for r in results if r is not None]

    def check_url(self, url: str) -> str | None:
        if not url.startswith("memory://") or len(url) <= len("memory://"):
            return f"in-process services live at memory://<name>, not {url!r}"
        return None

    @staticmethod
    def _gateway(url: str, status: int, what: str) -> None:
        if status in (502, 504):  # transient, as over HTTP
            raise BadGatewayError(f"{url} answered {status} to {what} (gateway)", peer=url)

    def _decode(self, url: str, request: TaskRequest, status: int, body: Any) -> TaskAnswer:
        self._gateway(url, status, repr(request.action.value))
        if status != 200:
            raise PeerAnswerError(
                f"{url} answered {status} to {request.action.value!r}",
                peer=url,
                status_code=status,
                body=json.dumps(body),
            )
        try:
            return decode_answer(body)
        except ValidationError as error:
            raise MalformedAnswerError(
                f"{url} answered {request.action.value!r} with a malformed body: {error.message}",
                peer=url,
                status_code=200,
                body=json.dumps(body),
            ) from None

    async def status(self, service: TaskService) -> ServiceStatus:
        url = service.url
        status, body = await self._deliver(url, "status", "", "", None)
        self._gateway(url, status, "GET /status")
        if status != 200:
            raise PeerAnswerError(
                f"{url} answered {status} to GET /status", peer=url, status_code=status
            )
        try:
            return decode_status(body)
        except ValidationError as error:
            raise MalformedAnswerError(
                f"{url} answered GET /status with a malformed body: {error.message}",
                peer=url,
                status_code=200,
            ) from None


class InProcessParent(ParentLink):
    """A parent manager in the same process."""

    def __init__(self, manager: RolloutManager) -> None:
        self.manager = manager

    async def poll(
        self, child_id: str, area: dict[str, Any], number_of_children: int
    ) -> PollAnswer:
        return await self.manager.poll(child_id, area, number_of_children)

    async def get_release(self, child_id: str, release_id: str) -> str:
        return await self.manager.get_release(child_id, release_id)

    async def get_functions(self, release_id: str, child_id: str = "") -> bytes:
        return await self.manager.get_functions(release_id, child_id)

    async def submit_result(self, body: dict[str, Any]) -> str:
        return await self.manager.submit_result(body)

    async def end_stage(self, child_id: str, strategy_id: str, stage_name: str) -> EndStageAnswer:
        return await self.manager.end_stage(child_id, strategy_id, stage_name)
