"""One contract for every task-service transport: the same assertions, in memory and over HTTP.

``memory``: :class:`MemoryTransport` delivering to a kit at ``memory://svc``.
``http``: :class:`HttpTransport` reaching the same kind of kit served by ``task_service_app``
through ``httpx.ASGITransport`` (no sockets), at ``http://svc.test``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import httpx
import pytest

from release_coordinator import (
    HttpTransport,
    KitTask,
    MemoryTransport,
    PeerAnswerError,
    ServiceStatus,
    TaskAction,
    TaskAnswer,
    TaskRequest,
    TaskService,
    TaskServiceKit,
    TaskServiceTransport,
    TransientTransportError,
)
from release_coordinator.server.taskservice_app import task_service_app

pytestmark = pytest.mark.anyio

RELEASE = "RE_1"
STUDIES = ("SD_1", "SD_2")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ControlledKit(TaskServiceKit):
    """A kit whose staging and publishing wait for gates the test opens."""

    def __init__(self) -> None:
        super().__init__("svc", version="2.3")
        self.stage_gate = asyncio.Event()
        self.publish_gate = asyncio.Event()
        self.accepting = True
        self.canceled: list[str] = []

    async def accept(self, task: KitTask) -> bool:
        return self.accepting

    async def stage(self, task: KitTask) -> None:
        await task.report_progress(40)
        await self.stage_gate.wait()

    async def publish(self, task: KitTask) -> None:
        await task.report_progress(10)
        await self.publish_gate.wait()

    async def cancel(self, task: KitTask) -> None:
        self.canceled.append(task.task_id)


@attrs.define
class Peer:
    """A transport, the service it reaches, and the kit behind it."""

    transport: TaskServiceTransport
    service: TaskService
    kit: ControlledKit

    async def send(self, action: TaskAction, task_id: str = "TA_1") -> TaskAnswer:
        return await self.transport.send(
            self.service, TaskRequest(action, task_id, RELEASE, STUDIES)
        )

    async def until(self, state: str, task_id: str = "TA_1") -> TaskAnswer:
        """Poll ``get_status`` until the task reports ``state`` (bounded)."""
        for _ in range(500):
            answer = await self.send(TaskAction.GET_STATUS, task_id)
            if answer.state == state:
                return answer
            await asyncio.sleep(0.01)
        raise AssertionError(f"task {task_id} never reached {state!r}")


def _memory(kit: ControlledKit) -> tuple[TaskServiceTransport, str]:
    transport = MemoryTransport(timeout=5.0)
    return transport, transport.add("memory://svc", kit)


def _http(kit: ControlledKit) -> tuple[TaskServiceTransport, str]:
    app = task_service_app(kit)
    return HttpTransport(transport=httpx.ASGITransport(app=app), timeout=5.0), "http://svc.test"


TRANSPORTS: dict[str, Callable[[ControlledKit], tuple[TaskServiceTransport, str]]] = {
    "memory": _memory,
    "http": _http,
}


@pytest.fixture(params=sorted(TRANSPORTS))
async def peer(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Peer]:
    kit = ControlledKit()
    transport, url = TRANSPORTS[request.param](kit)
    service = TaskService(id="TS_1", name="svc", url=url)
    try:
        yield Peer(transport, service, kit)
    finally:
        kit.stage_gate.set()
        kit.publish_gate.set()
        await kit.aclose()
        await transport.aclose()


async def _refused(call: Awaitable[object], status_code: int) -> PeerAnswerError:
    with pytest.raises(PeerAnswerError) as caught:
        await call
    error = caught.value
    assert error.status_code == status_code
    assert not isinstance(error, TransientTransportError)
    assert error.peer
    return error


# -- health ------------------------------------------------------------------------------------


async def test_status_answers_who_the_service_is(peer: Peer) -> None:
    status = await peer.transport.status(peer.service)
    assert status == ServiceStatus("svc", "ready", "2.3")


async def test_unhealthy_service_answers_503_to_status(peer: Peer) -> None:
    peer.kit.healthy = False
    await _refused(peer.transport.status(peer.service), 503)
    peer.kit.healthy = True
    assert (await peer.transport.status(peer.service)).name == "svc"


# -- the path of a task ------------------------------------------------------------------------


async def test_initialize_is_pending_and_idempotent(peer: Peer) -> None:
    first = await peer.send(TaskAction.INITIALIZE)
    assert isinstance(first, TaskAnswer)
    assert (first.task_id, first.release_id, first.state) == ("TA_1", RELEASE, "pending")
    assert first.progress == 0
    assert first.name == "svc"
    assert first.date_submitted
    again = await peer.send(TaskAction.INITIALIZE)
    assert again == first
    assert list(peer.kit.tasks) == ["TA_1"]
    assert peer.kit.tasks["TA_1"].studies == STUDIES


async def test_start_runs_and_progress_is_an_int(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    started = await peer.send(TaskAction.START)
    assert started.state == "running"
    running = await peer.until("running")
    for _ in range(500):
        if running.progress == 40:
            break
        await asyncio.sleep(0.01)
        running = await peer.send(TaskAction.GET_STATUS)
    assert running.progress == 40
    assert isinstance(running.progress, int)
    assert (running.task_id, running.release_id) == ("TA_1", RELEASE)
    # a repeated start answers the current state and starts nothing new
    assert (await peer.send(TaskAction.START)).state == "running"


async def test_staged_once_the_stage_work_is_done(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    await peer.send(TaskAction.START)
    peer.kit.stage_gate.set()
    staged = await peer.until("staged")
    assert staged.progress == 100
    assert (staged.task_id, staged.release_id) == ("TA_1", RELEASE)


async def test_publish_goes_publishing_then_published(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    await peer.send(TaskAction.START)
    peer.kit.stage_gate.set()
    await peer.until("staged")
    publishing = await peer.send(TaskAction.PUBLISH)
    assert publishing.state == "publishing"
    assert (await peer.send(TaskAction.PUBLISH)).state == "publishing"  # idempotent
    peer.kit.publish_gate.set()
    published = await peer.until("published")
    assert published.progress == 100
    assert (await peer.send(TaskAction.PUBLISH)).state == "published"


async def test_cancel_cancels_once(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    await peer.send(TaskAction.START)
    canceled = await peer.send(TaskAction.CANCEL)
    assert canceled.state == "canceled"
    assert (canceled.task_id, canceled.release_id) == ("TA_1", RELEASE)
    assert (await peer.send(TaskAction.CANCEL)).state == "canceled"
    assert (await peer.send(TaskAction.GET_STATUS)).state == "canceled"
    assert peer.kit.canceled == ["TA_1"]


# -- refusals ----------------------------------------------------------------------------------


async def test_cancel_of_an_unknown_task_is_404(peer: Peer) -> None:
    await _refused(peer.send(TaskAction.CANCEL, "TA_nobody"), 404)


async def test_get_status_of_an_unknown_task_is_404(peer: Peer) -> None:
    await _refused(peer.send(TaskAction.GET_STATUS, "TA_nobody"), 404)


async def test_a_task_of_another_release_is_unknown(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    other = TaskRequest(TaskAction.GET_STATUS, "TA_1", "RE_other")
    await _refused(peer.transport.send(peer.service, other), 404)


async def test_publish_before_staged_is_400(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    error = await _refused(peer.send(TaskAction.PUBLISH), 400)
    assert "not staged" in error.body
    assert peer.kit.tasks["TA_1"].state == "pending"


async def test_a_refused_task_is_503_on_initialize(peer: Peer) -> None:
    peer.kit.accepting = False
    await _refused(peer.send(TaskAction.INITIALIZE), 503)
    assert peer.kit.tasks == {}
    await _refused(peer.send(TaskAction.GET_STATUS), 404)


async def test_send_many_keeps_order_and_errors(peer: Peer) -> None:
    await peer.send(TaskAction.INITIALIZE)
    answers = await peer.transport.send_many(
        [
            (peer.service, TaskRequest(TaskAction.GET_STATUS, "TA_1", RELEASE)),
            (peer.service, TaskRequest(TaskAction.GET_STATUS, "TA_nobody", RELEASE)),
            (peer.service, TaskRequest(TaskAction.INITIALIZE, "TA_2", RELEASE, STUDIES)),
        ]
    )
    first, second, third = answers
    assert isinstance(first, TaskAnswer)
    assert first.task_id == "TA_1"
    assert first.state == "pending"
    assert isinstance(second, PeerAnswerError)
    assert second.status_code == 404
    assert isinstance(third, TaskAnswer)
    assert third.task_id == "TA_2"
    assert third.state == "pending"
