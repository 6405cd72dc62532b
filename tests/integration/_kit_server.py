"""A real task-service server for the process test: several kits, one per path.

Run by ``tests/integration/test_http_process.py`` as::

    python -m uvicorn _kit_server:create_app --factory --app-dir tests/integration ...

``RC_TEST_KITS`` (default 3) kits are served at ``/svc0``, ``/svc1`` ...; ``RC_TEST_TOKEN``, when
set, is the bearer token every request must carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount

from release_coordinator import KitTask, TaskServiceKit
from release_coordinator.server.taskservice_app import task_service_app


class StudyKit(TaskServiceKit):
    """Stages a release study by study, reporting progress; publishing takes a moment too."""

    async def stage(self, task: KitTask) -> None:
        studies = task.studies or ("all",)
        for i, _study in enumerate(studies):
            await asyncio.sleep(0.02)
            await task.report_progress(100 * (i + 1) // len(studies))

    async def publish(self, task: KitTask) -> None:
        await asyncio.sleep(0.02)


def create_app() -> Starlette:
    count = int(os.environ.get("RC_TEST_KITS", "3"))
    token = os.environ.get("RC_TEST_TOKEN") or None
    kits = [StudyKit(f"svc{i}", version="test") for i in range(count)]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        for kit in kits:  # mounted apps get no lifespan of their own
            await kit.aclose()

    routes = [Mount(f"/{kit.name}", app=task_service_app(kit, token=token)) for kit in kits]
    return Starlette(routes=routes, lifespan=lifespan)
