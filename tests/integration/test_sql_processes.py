"""Several coordinator processes over one PostgreSQL database.

The task services are one real HTTP server process (``_sql_kit_server.py``) whose kits count
every action they receive and who sent it; the coordinators are processes of their own
(``_sql_coordinator.py``) that share the database and talk to the kits over 127.0.0.1.

- A coordinator killed with SIGKILL in the middle of a release is taken over by another once
  its lease runs out, and the release is published, with no action repeated after the
  takeover and no event lost.
- Two coordinators started at once over the same unfinished releases never both send an
  action: each release is driven by one of them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_support import HOST, free_port, stop
from release_coordinator import (
    Event,
    EventKind,
    EventType,
    Release,
    ReleaseState,
    TaskService,
    TaskState,
)
from release_coordinator.storage.sql import SQLStore
from sql_support import postgres_schema

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KITS = 3
READY_WITHIN = 15.0
LEASE = 2.0
TASK_PATH = ["initialized", "running", "staged", "publishing", "published"]
RELEASE_PATH = ["initializing", "running", "staged", "publishing", "published"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class KitServer:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def counts(self) -> list[dict[str, str]]:
        answer = httpx.get(f"{self.base}/counts", timeout=5.0)
        answer.raise_for_status()
        result: list[dict[str, str]] = answer.json()
        return result


def _start_kits(tmp_path: Path, stage_seconds: float) -> Iterator[KitServer]:
    token = secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "RC_TEST_KITS": str(KITS),
        "RC_TEST_TOKEN": token,
        "RC_TEST_STAGE_SECONDS": str(stage_seconds),
    }
    for attempt in range(3):  # a port found free can be taken before uvicorn binds it
        port = free_port()
        log = tmp_path / f"kits-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "_sql_kit_server:create_app"),
                    *("--factory", "--app-dir", str(HERE), "--host", HOST),
                    *("--port", str(port), "--lifespan", "on", "--log-level", "warning"),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + READY_WITHIN
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if httpx.get(f"{base}/counts", timeout=1.0).status_code == 200:
                        yield KitServer(base, token)
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        finally:
            stop(process)
    raise AssertionError("the kit server never started:\n" + log.read_text(errors="replace"))


@pytest.fixture
def slow_kits(tmp_path: Path) -> Iterator[KitServer]:
    yield from _start_kits(tmp_path, stage_seconds=1.5)


@pytest.fixture
def quick_kits(tmp_path: Path) -> Iterator[KitServer]:
    yield from _start_kits(tmp_path, stage_seconds=0.3)


@pytest.fixture
def db(postgres_url: str) -> Iterator[str]:
    with postgres_schema(postgres_url) as url:
        yield url


@pytest.fixture
async def store(db: str) -> AsyncIterator[SQLStore]:
    opened = await SQLStore.connect(db)
    yield opened
    await opened.close()


class Coordinators:
    """Coordinator processes started by a test; every one still running is stopped after."""

    def __init__(self, db: str, kits: KitServer, tmp_path: Path) -> None:
        self.db = db
        self.kits = kits
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, owner: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{owner}.log").open("wb")
        process = subprocess.Popen(
            [
                *(sys.executable, str(HERE / "_sql_coordinator.py"), "--db", self.db),
                *("--owner", owner, "--lease", str(LEASE), "--timeout", "25"),
            ],
            cwd=ROOT,
            env={**os.environ, "RC_TEST_TOKEN": self.kits.token},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes[owner] = process
        return process

    def log(self, owner: str) -> str:
        return (self.tmp_path / f"{owner}.log").read_text(errors="replace")

    def wait_started(self, owner: str, within: float = READY_WITHIN) -> None:
        deadline = time.monotonic() + within
        while "started" not in self.log(owner):
            assert self.processes[owner].poll() is None, self.log(owner)
            assert time.monotonic() < deadline, f"{owner} did not start:\n{self.log(owner)}"
            time.sleep(0.05)

    def finish(self, owner: str, within: float = 30.0) -> None:
        code = self.processes[owner].wait(timeout=within)
        assert code == 0, f"{owner} exited {code}:\n{self.log(owner)}"

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop(process)


@pytest.fixture
def coordinators_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Coordinators] = []

    def make(db: str, kits: KitServer) -> Coordinators:
        group = Coordinators(db, kits, tmp_path)
        started.append(group)
        return group

    yield make
    for group in started:
        group.stop_all()


def ev(message: str, **kw: Any) -> Event:
    return Event(EventType.INFO, EventKind.USER_ACTION, message, **kw)


async def prepare(store: SQLStore, kits: KitServer, releases: int) -> list[Release]:
    """Register the kits and create unfinished releases, as a coordinator would have."""
    services = [
        await store.add_service(
            TaskService(f"TS_{i}", f"svc{i}", f"{kits.base}/svc{i}"), ev(f"svc{i} registered")
        )
        for i in range(KITS)
    ]
    created = []
    for i in range(releases):
        release, _ = await store.create_release(
            Release(f"RE_{i}", f"release {i}", "0.0.0", auto_publish=True, studies=("SD_1",)),
            [s.id for s in services],
            ev(f"release {i} created", release_id=f"RE_{i}"),
        )
        created.append(release)
    return created


def actions(log: list[dict[str, str]]) -> Counter[tuple[str, str]]:
    """(task, action) -> how many times it was received; status polls left out."""
    return Counter((r["task_id"], r["action"]) for r in log if r["action"] != "get_status")


async def assert_published_with_every_event(store: SQLStore, releases: list[Release]) -> None:
    events = await store.list_events()
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))
    for release in releases:
        done = await store.get_release(release.id)
        assert done.state is ReleaseState.PUBLISHED, done.failure
        mine = [e for e in events if e.release_id == release.id and e.kind is EventKind.TRANSITION]
        # every state change has its event, once: nothing lost, nothing recorded twice
        assert [e.state for e in mine if e.task_id is None] == RELEASE_PATH
        for task in await store.list_tasks(release.id):
            assert task.state is TaskState.PUBLISHED
            assert [e.state for e in mine if e.task_id == task.id] == TASK_PATH, task.id


@pytest.mark.anyio
async def test_a_killed_coordinator_is_taken_over_and_the_release_published(
    store: SQLStore, db: str, slow_kits: KitServer, coordinators_for: Any
) -> None:
    releases = await prepare(store, slow_kits, releases=2)
    group: Coordinators = coordinators_for(db, slow_kits)
    first = group.start("first")
    # wait until both releases are staging everywhere: the middle of the release
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tasks = [t for r in releases for t in await store.list_tasks(r.id)]
        if {t.state for t in tasks} == {TaskState.RUNNING}:
            break
        assert first.poll() is None, group.log("first")
        time.sleep(0.05)  # noqa: ASYNC251 - a test's own pacing
    else:
        raise AssertionError(f"the releases never ran:\n{group.log('first')}")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    time.sleep(0.3)  # noqa: ASYNC251 - let requests already on the wire land
    before = slow_kits.counts()
    assert {r["agent"] for r in before} == {"rc-test/first"}

    killed_at = time.monotonic()
    group.start("second")
    group.finish("second")
    taken_over_after = time.monotonic() - killed_at

    await assert_published_with_every_event(store, releases)
    after = slow_kits.counts()[len(before) :]
    assert after, "the second coordinator sent nothing"
    assert {r["agent"] for r in after} == {"rc-test/second"}
    again = actions(after)
    assert max(again.values()) == 1, again  # each action at most once per task after takeover
    assert max((actions(before) + again).values()) <= 2
    for release in releases:
        for task in await store.list_tasks(release.id):
            assert again[(task.id, "publish")] == 1
    assert taken_over_after >= LEASE - 0.5  # it waited for the lease to run out


@pytest.mark.anyio
async def test_two_coordinators_started_at_once_never_both_send_an_action(
    store: SQLStore, db: str, quick_kits: KitServer, coordinators_for: Any
) -> None:
    releases = await prepare(store, quick_kits, releases=6)
    group: Coordinators = coordinators_for(db, quick_kits)
    group.start("one")
    group.start("two")
    # more releases while both run: their claim loops race for every one of them
    group.wait_started("one")
    group.wait_started("two")
    for i in range(6, 12):
        release, _ = await store.create_release(
            Release(f"RE_{i}", f"release {i}", "0.0.0", auto_publish=True),
            [s.id for s in await store.list_services()],
            ev(f"release {i} created", release_id=f"RE_{i}"),
        )
        releases.append(release)
    group.finish("one")
    group.finish("two")

    await assert_published_with_every_event(store, releases)
    log = quick_kits.counts()
    sent = actions(log)
    expected = {"initialize", "start", "publish"}
    for release in releases:
        for task in await store.list_tasks(release.id):
            for action in expected:
                assert sent[(task.id, action)] == 1, (task.id, action, sent)
    print("actions sent by", dict(Counter(r["agent"] for r in log)))
    senders: dict[str, set[str]] = {}
    for record in log:
        senders.setdefault(record["task_id"], set()).add(record["agent"])
    assert all(len(agents) == 1 for agents in senders.values()), senders
