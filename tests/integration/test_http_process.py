"""A release published across real task services: a uvicorn process on 127.0.0.1.

The server (``_kit_server.py``) serves three kits at ``/svc0`` .. ``/svc2`` behind a bearer
token; the Coordinator reaches them with HttpTransport over real sockets.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from process_support import HOST, free_port, stop
from release_coordinator import (
    Coordinator,
    CoordinatorConfig,
    HealthStatus,
    HttpTransport,
    MemoryStore,
    ReleaseState,
    RetryPolicy,
    TaskAction,
    TaskRequest,
    TaskState,
)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KITS = 3
READY_WITHIN = 15.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _ready(process: subprocess.Popen[bytes], url: str, token: str) -> bool:
    """Whether ``url`` answers 200 before the deadline; False if the process exits first."""
    deadline = time.monotonic() + READY_WITHIN
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.get(url, headers=headers).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {READY_WITHIN:g}s")


@pytest.fixture
def kit_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(base_url, token)`` of a running server process; stopped afterwards."""
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "RC_TEST_KITS": str(KITS), "RC_TEST_TOKEN": token}
    logs: list[Path] = []
    for attempt in range(3):  # a port found free can be taken before uvicorn binds it
        port = free_port()
        log = tmp_path / f"uvicorn-{attempt}.log"
        logs.append(log)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "_kit_server:create_app",
                    "--factory",
                    "--app-dir",
                    str(HERE),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--lifespan",
                    "on",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://{HOST}:{port}"
        try:
            if _ready(process, f"{base}/svc0/status", token):
                yield base, token
                return
        finally:
            stop(process)
    output = "\n".join(log.read_text(errors="replace") for log in logs)
    raise AssertionError(f"the server process never started:\n{output}")


@pytest.mark.anyio
async def test_a_release_is_published_across_real_http_services(
    kit_server: tuple[str, str],
) -> None:
    base, token = kit_server
    transport = HttpTransport(token=token, timeout=5.0)
    config = CoordinatorConfig(
        poll_interval=0.05,
        retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2),
        health_interval=0,
        claim_interval=0.05,
    )
    try:
        async with Coordinator(MemoryStore(), transport, config=config) as coordinator:
            services = [
                await coordinator.register_service(f"svc{i}", f"{base}/svc{i}") for i in range(KITS)
            ]
            for i, service in enumerate(services):
                assert service.health.status is HealthStatus.OK
                assert service.health.reported_name == f"svc{i}"
            release = await coordinator.create_release(
                "process release", studies=["SD_1", "SD_2", "SD_3"], auto_publish=True
            )
            done = await coordinator.wait(release.id, timeout=30)
            assert done.state is ReleaseState.PUBLISHED, done.failure
            assert done.version == "0.1.0"
            tasks = await coordinator.list_tasks(release.id)
            assert len(tasks) == KITS
            assert {task.state for task in tasks} == {TaskState.PUBLISHED}
            # each remote kit holds its task as published, too
            by_id = {service.id: service for service in services}
            for task in tasks:
                answer = await transport.send(
                    by_id[task.service_id],
                    TaskRequest(TaskAction.GET_STATUS, task.id, release.id),
                )
                assert (answer.task_id, answer.state, answer.progress) == (
                    task.id,
                    "published",
                    100,
                )
    finally:
        await transport.aclose()
