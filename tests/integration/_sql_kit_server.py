"""A task-service server for the SQL process tests: kits that count every action they get.

Run by ``tests/integration/test_sql_processes.py`` as::

    python -m uvicorn _sql_kit_server:create_app --factory --app-dir tests/integration ...

``RC_TEST_KITS`` (default 3) kits are served at ``/svc0``, ``/svc1`` ...; every request must
carry the bearer token ``RC_TEST_TOKEN``. Staging takes ``RC_TEST_STAGE_SECONDS`` (default 1).
``GET /counts`` answers every ``POST .../tasks`` received so far, in order, as
``[{"service", "task_id", "action", "agent"}]``: ``agent`` is the sender's User-Agent, which
tells the coordinator processes apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from release_coordinator import KitTask, TaskServiceKit
from release_coordinator.server.taskservice_app import task_service_app

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SlowKit(TaskServiceKit):
    """Stages in a few steps over ``stage_seconds``; publishing is quick."""

    def __init__(self, name: str, stage_seconds: float) -> None:
        super().__init__(name, version="test")
        self.stage_seconds = stage_seconds

    async def stage(self, task: KitTask) -> None:
        for step in range(1, 5):
            await asyncio.sleep(self.stage_seconds / 4)
            await task.report_progress(25 * step)

    async def publish(self, task: KitTask) -> None:
        await asyncio.sleep(0.01)


class Counting:
    """ASGI middleware: notes the action, task and sender of every POST to a kit's /tasks."""

    def __init__(self, app: ASGIApp, log: list[dict[str, str]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or scope["method"] != "POST" or not path.endswith("/tasks"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            data = json.loads(body)
            self.log.append(
                {
                    "service": path.strip("/").split("/")[0],
                    "task_id": str(data.get("task_id")),
                    "action": str(data.get("action")),
                    "agent": headers.get("user-agent", ""),
                }
            )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app() -> ASGIApp:
    count = int(os.environ.get("RC_TEST_KITS", "3"))
    token = os.environ.get("RC_TEST_TOKEN") or None
    stage_seconds = float(os.environ.get("RC_TEST_STAGE_SECONDS", "1"))
    kits = [SlowKit(f"svc{i}", stage_seconds) for i in range(count)]
    log: list[dict[str, str]] = []

    async def counts(_request: Request) -> JSONResponse:
        return JSONResponse(log)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        for kit in kits:  # mounted apps get no lifespan of their own
            await kit.aclose()

    routes: list[Route | Mount] = [Route("/counts", counts)]
    routes += [Mount(f"/{kit.name}", app=task_service_app(kit, token=token)) for kit in kits]
    return Counting(Starlette(routes=routes, lifespan=lifespan), log)
