"""Issue #16 over real processes: releases created and canceled at once, against a real
``release-coordinator serve`` on 127.0.0.1.

The server drives each new release at once (``waiting -> initializing -> running``) while the
operator's cancel arrives: the two race on the release's state. Whichever compare-and-set is
stored first, the cancel must be accepted (200, it is allowed from every non-final state), the
release must end ``canceled``, and the server must not log an error about the race it lost.

The task services are three kits in one uvicorn process (``_kit_server.py``) behind a bearer
token, which ``serve`` sends as its ``RC_TASK_SERVICE_TOKEN``. Deadlines bound every wait;
nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_support import HOST, free_port, stop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KITS = 3
RELEASES = 8  # created at once, each canceled as soon as it exists
ROUNDS = 3  # the race does not happen every time: several rounds of it
READY_WITHIN = 20.0  # limits for waiting, never assertions on time
FINISH_WITHIN = 30.0
STOP_WITHIN = 15.0
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
FINAL = ("published", "canceled", "failed")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _answers(url: str, token: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether ``url`` answers 200 before the deadline; False if the process exits first."""
    deadline = time.monotonic() + READY_WITHIN
    with httpx.Client(timeout=1.0, headers={"Authorization": f"Bearer {token}"}) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.get(url).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    return False


@pytest.fixture
def kits(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(base_url, token)`` of a process serving ``KITS`` task services; stopped afterwards."""
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "RC_TEST_KITS": str(KITS), "RC_TEST_TOKEN": token}
    logs = []
    for attempt in range(3):  # a port found free can be taken before uvicorn binds it
        port = free_port()
        log = tmp_path / f"kits-{attempt}.log"
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
            if _answers(f"{base}/svc0/status", token, process):
                yield base, token
                return
        finally:
            stop(process)
    output = "\n".join(log.read_text(errors="replace") for log in logs)
    raise AssertionError(f"the task services never started:\n{output}")


class Serve:
    """A ``release-coordinator serve`` process; its stderr in a file."""

    def __init__(self, tmp: Path, db: str, operator: str, service_token: str) -> None:
        self.log = tmp / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
        env.update(
            PYTHONUNBUFFERED="1",
            RC_OPERATOR_TOKENS=f"ops={operator}",
            RC_TASK_SERVICE_TOKEN=service_token,
        )
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "release_coordinator",
                    "serve",
                    "--db",
                    db,
                    "--host",
                    HOST,
                    "--port",
                    "0",
                ],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.base = f"http://{HOST}:{self._port()}"

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def _port(self) -> int:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            found = LISTENING.search(self.stderr())
            if found:
                return int(found[1])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the server did not start:\n{self.stderr()}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit after SIGTERM:\n{self.stderr()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


async def test_releases_canceled_as_they_are_created_all_end_canceled(
    tmp_path: Path, kits: tuple[str, str]
) -> None:
    """Over ``serve``'s default store, a SQLite file: its calls suspend the event loop, so the
    driver's steps and the cancels interleave (``--db memory`` rarely shows the race: its
    compare-and-sets never suspend)."""
    kits_base, service_token = kits
    operator = secrets.token_urlsafe(24)
    serve = Serve(tmp_path, f"sqlite:///{tmp_path / 'rc.db'}", operator, service_token)
    try:
        async with httpx.AsyncClient(
            base_url=serve.base,
            timeout=10.0,
            headers={"Authorization": f"Bearer {operator}"},
        ) as client:
            for i in range(KITS):
                answer = await client.post(
                    "/task-services", json={"name": f"svc{i}", "url": f"{kits_base}/svc{i}"}
                )
                assert answer.status_code == 201, answer.text

            async def create_and_cancel(name: str) -> tuple[str, httpx.Response]:
                created = await client.post("/releases", json={"name": name, "studies": ["S"]})
                assert created.status_code == 201, created.text
                release_id = created.json()["id"]
                return release_id, await client.post(
                    f"/releases/{release_id}/cancel", json={"reason": "race"}
                )

            results: list[tuple[str, httpx.Response]] = []
            for round_ in range(ROUNDS):
                results += await asyncio.gather(
                    *(create_and_cancel(f"r{round_}-{i}") for i in range(RELEASES))
                )
            refused = [(rid, a.status_code, a.text) for rid, a in results if a.status_code != 200]
            assert refused == [], serve.stderr()
            for _, answer in results:
                assert answer.json()["state"] in ("canceling", "canceled"), answer.text

            ids = [rid for rid, _ in results]
            deadline = time.monotonic() + FINISH_WITHIN
            states: dict[str, Any] = {}
            while time.monotonic() < deadline:
                states = {
                    rid: (await client.get(f"/releases/{rid}")).json()["state"] for rid in ids
                }
                if all(s in FINAL for s in states.values()):
                    break
                await asyncio.sleep(0.1)
            assert set(states.values()) == {"canceled"}, (states, serve.stderr())

            # A repeated cancel is answered with the current state (idempotent).
            again = await client.post(f"/releases/{ids[0]}/cancel", json={})
            assert again.status_code == 200, again.text
            assert again.json()["state"] == "canceled"
    finally:
        status = serve.terminate()
    stderr = serve.stderr()
    assert status == 0, stderr
    assert " ERROR " not in stderr, stderr
    assert "Traceback" not in stderr, stderr
