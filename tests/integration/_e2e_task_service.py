"""One task service of ``test_end_to_end.py``: ONE TaskServiceKit behind ``task_service_app``.

Run as::

    python tests/integration/_e2e_task_service.py --name portal --out DIR --coordinator URL

- every request must carry ``Authorization: Bearer $RC_E2E_SERVICE_TOKEN`` (what the
  coordinator sends: its ``RC_TASK_SERVICE_TOKEN``);
- staging writes ``DIR/<release id>/staged.json`` (the task and its studies), publishing writes
  ``DIR/<release id>/published.json``;
- every state change is pushed to the coordinator at ``URL`` (``PATCH /releases/{rid}/tasks/
  {id}``) with ``$RC_E2E_CALLBACK_TOKEN`` (the service's entry of the coordinator's
  ``RC_CALLBACK_TOKENS``), so the release does not wait for the coordinator's polling; a
  refused push is logged, and the coordinator's polling catches up.

Listens on 127.0.0.1 at a port the OS picks and logs it (see ``_e2e_serving``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

import httpx
from _e2e_serving import base_url, configure_logging, listen, serve

from release_coordinator import KitTask, TaskServiceKit
from release_coordinator.server.taskservice_app import task_service_app

log = logging.getLogger("e2e.task_service")


class FileKit(TaskServiceKit):
    """Stages a release as a file; publishing writes a second one."""

    def __init__(self, name: str, out: Path) -> None:
        super().__init__(name, version="e2e")
        self.out = out

    def _folder(self, task: KitTask) -> Path:
        folder = self.out / task.release_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    async def stage(self, task: KitTask) -> None:
        record = {"service": self.name, "task_id": task.task_id, "studies": list(task.studies)}
        (self._folder(task) / "staged.json").write_text(json.dumps(record), encoding="utf-8")
        await task.report_progress(50)

    async def publish(self, task: KitTask) -> None:
        staged = self._folder(task) / "staged.json"
        if not staged.is_file():
            raise RuntimeError(f"nothing staged for {task.release_id}")
        record = {"service": self.name, "task_id": task.task_id}
        (self._folder(task) / "published.json").write_text(json.dumps(record), encoding="utf-8")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--coordinator", required=True, help="the coordinator's base URL")
    options = parser.parse_args()
    configure_logging()
    token = os.environ["RC_E2E_SERVICE_TOKEN"]
    callback = {"Authorization": f"Bearer {os.environ['RC_E2E_CALLBACK_TOKEN']}"}
    coordinator = options.coordinator.rstrip("/")
    sock = listen()
    kit = FileKit(options.name, options.out)
    async with httpx.AsyncClient(timeout=5.0) as client:

        async def push(task_id: str, release_id: str, state: str, progress: int) -> None:
            answer = await client.patch(
                f"{coordinator}/releases/{release_id}/tasks/{task_id}",
                json={"state": state, "progress": progress},
                headers=callback,
            )
            if answer.status_code != 200:
                log.warning("push %s %s: %s %s", task_id, state, answer.status_code, answer.text)

        kit.connect(push)
        app = task_service_app(kit, token=token)
        log.info("task service %s at %s", options.name, base_url(sock))
        await serve(app, sock, f"task service {options.name}")


if __name__ == "__main__":
    asyncio.run(main())
