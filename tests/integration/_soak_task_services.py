"""The faulty task services of ``test_soak.py``: several TaskServiceKits in ONE process, each
behind ``task_service_app`` at ``/<name>``, each with its own injected faults.

Run as::

    python tests/integration/_soak_task_services.py --coordinator URL --stats FILE \\
        [--timeout-sleep 11] [--seed 1]

- every request must carry ``Authorization: Bearer $RC_SOAK_SERVICE_TOKEN`` (what the
  coordinator sends: its ``RC_TASK_SERVICE_TOKEN``);
- each kit pushes its state changes to the coordinator (``PATCH /releases/{rid}/tasks/{id}``)
  with its own token, ``$RC_SOAK_CALLBACK_<NAME>`` (its entry of ``RC_CALLBACK_TOKENS``);
- staging takes a second or two with progress reports, publishing a moment;
- the faults (:data:`PROFILES`), drawn per ``POST /tasks`` request from a seeded generator:

  ========  ===================================================================================
  error     answer 500 without acting (a real answer: the coordinator fails the task)
  reject    answer 503 to ``initialize`` without acting (the task is rejected)
  gateway   answer 502 or 504 without acting (transient: the coordinator retries)
  timeout   sleep ``--timeout-sleep`` seconds (past the coordinator's time-out), then act
  drop      act, then drop the connection in the middle of the answer (transient)
  early     act, and answer ``start``/``publish`` only once the job ended and its callback
            (``staged``/``published``) was answered: the callback arrives before the answer
  ========  ===================================================================================

Every fault drawn and every callback's answer is counted; the counts are written to ``--stats``
as JSON every second and at the end. Listens on 127.0.0.1 at a port the OS picks and logs it
(see ``_e2e_serving``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
from _e2e_serving import base_url, configure_logging, listen, serve
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from release_coordinator import KitTask, TaskServiceKit
from release_coordinator.server.taskservice_app import task_service_app

log = logging.getLogger("soak.task_services")


@attrs.frozen
class Faults:
    """Per-request probabilities of each fault (the rest of the time: none)."""

    error: float = 0.0
    reject: float = 0.0
    gateway: float = 0.0
    timeout: float = 0.0
    drop: float = 0.0
    early: float = 0.0


#: The task services and their faults.
PROFILES = {
    "steady": Faults(),
    "flaky": Faults(gateway=0.08, timeout=0.03, drop=0.08),
    "early": Faults(early=0.9, drop=0.04),
    "broken": Faults(error=0.025, reject=0.05, gateway=0.04, timeout=0.02, drop=0.02),
}


class Stats:
    """What happened, by service: faults drawn per action, callback answers."""

    def __init__(self) -> None:
        self.faults: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.callbacks: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.callback_5xx: list[str] = []

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": {k: dict(v) for k, v in self.faults.items()},
            "callbacks": {k: dict(v) for k, v in self.callbacks.items()},
            "callback_5xx": self.callback_5xx[:50],
        }


class FaultyKit(TaskServiceKit):
    """A kit whose answers to ``POST /tasks`` suffer the faults of its profile (all but
    ``drop``, which :class:`Dropping` does at the HTTP edge)."""

    def __init__(
        self, name: str, faults: Faults, rng: random.Random, stats: Stats, timeout_sleep: float
    ) -> None:
        super().__init__(name, version="soak")
        self.faults = faults
        self.rng = rng
        self.stats = stats
        self.timeout_sleep = timeout_sleep

    async def stage(self, task: KitTask) -> None:
        steps = self.rng.randint(1, 3)
        for i in range(steps):
            await asyncio.sleep(self.rng.uniform(0.2, 0.7))
            await task.report_progress(100 * (i + 1) // (steps + 1))

    async def publish(self, task: KitTask) -> None:
        await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    def _draw(self, action: str) -> str:
        roll = self.rng.random()
        f = self.faults
        for fault, p in (
            ("error", f.error),
            ("reject", f.reject if action == "initialize" else 0.0),
            ("gateway", f.gateway),
            ("timeout", f.timeout),
            ("early", f.early if action in ("start", "publish") else 0.0),
        ):
            if roll < p:
                return fault
            roll -= p
        return "none"

    async def handle_task(self, body: Any) -> tuple[int, Any]:
        action = str(body.get("action")) if isinstance(body, dict) else "?"
        fault = self._draw(action)
        self.stats.faults[self.name][f"{action}:{fault}"] += 1
        if fault == "error":
            return 500, {"message": f"{self.name}: injected failure"}
        if fault == "reject":
            return 503, {"message": f"{self.name}: injected rejection"}
        if fault == "gateway":
            return self.rng.choice((502, 504)), {"message": f"{self.name}: injected gateway"}
        if fault == "timeout":
            # The coordinator gave up on this request meanwhile (and retried); act anyway, as
            # a slow service would.
            await asyncio.sleep(self.timeout_sleep)
        status, answer = await super().handle_task(body)
        if fault == "early" and status == 200:
            job = self._jobs.get(str(body.get("task_id")))
            if job is not None:
                # The job ends with its push (staged/published) to the coordinator: only then
                # is the answer to start/publish sent, still saying running/publishing.
                await asyncio.wait({job}, timeout=10.0)
        return status, answer


class Dropping:
    """ASGI middleware: a ``POST .../tasks`` drawn to be dropped is acted on (the app runs,
    its answer is thrown away), then answered with a 200 whose body breaks off: uvicorn
    closes the connection in the middle of the answer."""

    def __init__(
        self, app: ASGIApp, name: str, rate: float, rng: random.Random, stats: Stats
    ) -> None:
        self.app = app
        self.name = name
        self.rate = rate
        self.rng = rng
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not str(scope["path"]).endswith("/tasks")
            or self.rng.random() >= self.rate
        ):
            await self.app(scope, receive, send)
            return
        self.stats.faults[self.name]["drop"] += 1

        async def swallow(message: Message) -> None:
            return None

        await self.app(scope, receive, swallow)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"task_id": ', "more_body": True})
        # Returning with the answer incomplete: uvicorn closes the connection.


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True, help="the coordinator's base URL")
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--timeout-sleep", type=float, default=11.0)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    configure_logging()
    token = os.environ["RC_SOAK_SERVICE_TOKEN"]
    coordinator = options.coordinator.rstrip("/")
    stats = Stats()
    sock = listen()
    client = httpx.AsyncClient(timeout=10.0)
    kits: list[FaultyKit] = []
    routes = []
    for i, (name, faults) in enumerate(PROFILES.items()):
        rng = random.Random(options.seed * 1000 + i)
        kit = FaultyKit(name, faults, rng, stats, options.timeout_sleep)
        callback = {"Authorization": f"Bearer {os.environ[f'RC_SOAK_CALLBACK_{name.upper()}']}"}

        def pusher(name: str, callback: dict[str, str]) -> Any:
            async def push(task_id: str, release_id: str, state: str, progress: int) -> None:
                try:
                    answer = await client.patch(
                        f"{coordinator}/releases/{release_id}/tasks/{task_id}",
                        json={"state": state, "progress": progress},
                        headers=callback,
                    )
                except httpx.HTTPError as error:
                    stats.callbacks[name][type(error).__name__] += 1
                    log.warning("push %s %s: %s", task_id, state, type(error).__name__)
                    return
                stats.callbacks[name][str(answer.status_code)] += 1
                if answer.status_code >= 500:
                    stats.callback_5xx.append(f"{answer.status_code} {state}: {answer.text[:300]}")
                if answer.status_code != 200:
                    log.info("push %s %s: %s", task_id, state, answer.status_code)

            return push

        kit.connect(pusher(name, callback))
        kits.append(kit)
        app = Dropping(task_service_app(kit, token=token), name, faults.drop, rng, stats)
        routes.append(Mount(f"/{name}", app=app))

    def write_stats() -> None:
        options.stats.write_text(json.dumps(stats.to_json(), indent=1), encoding="utf-8")

    async def keep_writing() -> None:
        while True:
            await asyncio.sleep(1.0)
            write_stats()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        writer = asyncio.get_running_loop().create_task(keep_writing())
        try:
            yield
        finally:
            writer.cancel()
            for kit in kits:  # mounted apps get no lifespan of their own
                await kit.aclose()
            await client.aclose()
            write_stats()

    app = Starlette(routes=routes, lifespan=lifespan)
    for name in PROFILES:
        log.info("task service %s at %s/%s", name, base_url(sock), name)
    await serve(app, sock, "soak task services")


if __name__ == "__main__":
    asyncio.run(main())
