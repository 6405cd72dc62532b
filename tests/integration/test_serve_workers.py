"""``serve --workers 2`` over PostgreSQL, real processes: one lease holder ticks, another takes
over after the holder is killed (SIGKILL), the supervisor starts a new worker, children that
reach either worker see one state, a barrier opens once for all, and SIGTERM stops them all.

Each request goes on a new connection, so the kernel hands the requests to both workers."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_barrier_process import summary
from test_serve_process import ROLLOUT_ID, STRATEGY, NotYet, Server, archive, square, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_SECONDS = 2.0
HOLDS = re.compile(r"(\S+-w\d+)@\d+ holds the lease of the background loop")
WORKER = re.compile(r"worker (\S+-w(\d+)) \(pid (\d+)\)")
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
CHILDREN = 12


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    pytest.importorskip("psycopg")
    from sql_support import postgres_schema

    with postgres_schema(postgres_url) as url:
        yield url


def call(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own (so that any worker may take it)."""
    with httpx.Client(base_url=server.base, timeout=10.0) as client:
        return client.request(method, path, **kwargs)


def until(what: str, check: Callable[[], bool], server: Server, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within:g}s: {what}\n{server.stderr()}"
        time.sleep(0.1)


def report(child: str, release: str, stage: str, status: int, nxt: str = "") -> dict[str, Any]:
    stage_summary = {"stage_name": stage, "status": status, **summary()}
    return {
        "id": child,
        "release_id": release,
        "next_stage": nxt,
        "stage_summaries": [stage_summary],
    }


def two_workers(tmp_path: Path, database: str, *options: str) -> Server:
    """``serve --workers 2`` over ``database``, answering, both workers serving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    server = Server(
        tmp_path,
        env,
        tmp_path / "serve.log",
        *("--db", database, "--workers", "2", "--allow-anonymous", *options),
    )
    try:
        with httpx.Client(timeout=10.0) as probe:
            server.wait_ready(probe)
        until("two workers serving", lambda: len(WORKER.findall(server.stderr())) == 2, server)
    except BaseException:
        server.kill()
        raise
    return server


def test_two_workers_share_one_fleet_and_one_lease(tmp_path: Path, database: str) -> None:
    server = two_workers(
        tmp_path,
        database,
        *("--lease-seconds", str(LEASE_SECONDS), "--tick-interval", "0.2"),
        *("--lost-after", "3600", "--owner", "ws"),
    )
    try:
        log = server.stderr
        until("a lease holder", lambda: bool(HOLDS.search(log())), server)
        pids = {owner: int(pid) for owner, _index, pid in WORKER.findall(log())}
        assert set(pids) == {"ws-w1", "ws-w2"}, log()
        # One holder: the other never took the lease.
        assert len(set(HOLDS.findall(log()))) == 1, log()
        (holder,) = set(HOLDS.findall(log()))

        # -- one fleet: registrations and offers agree whichever worker answers ---------------
        areas = [square(12 + k, 42, 0.5) for k in range(CHILDREN)]
        ids = []
        for area in areas:
            answer = call(server, "POST", "/poll", json={"id": "", "geographic_area": area})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        created = call(
            server,
            "POST",
            "/rollouts",
            json={
                "strategy": STRATEGY,
                "archive": base64.b64encode(archive()).decode("ascii"),
                "target": square(0, 30, 30),
            },
        )
        assert created.status_code == 201, created.text
        for child, area in zip(ids, areas, strict=True):
            for _ in range(3):  # (each poll may reach the other worker)
                offered = call(server, "POST", "/poll", json={"id": child, "geographic_area": area})
                assert offered.json()["new_release"] == ROLLOUT_ID, offered.text
            fetched = call(
                server, "GET", "/release", params={"childID": child, "releaseID": ROLLOUT_ID}
            )
            assert fetched.status_code == 200, fetched.text
            done = call(server, "POST", "/result", json=report(child, ROLLOUT_ID, "canary", 2))
            assert done.status_code == 200, done.text

        # -- the barrier opens once, for every child, whichever worker each one asks ----------
        told: set[str] = set()

        def everyone_told() -> bool:
            for child in ids:
                if child in told:
                    continue
                body = {"id": child, "strategy_id": ROLLOUT_ID, "stage_name": "canary"}
                if call(server, "POST", "/end_stage", json=body).json().get("end_stage"):
                    told.add(child)
            return told == set(ids)

        until("every child told to end the canary", everyone_told, server)
        for child in ids:
            for stage, nxt in (("canary", "ab"), ("ab", "rollout")):
                done = call(
                    server, "POST", "/result", json=report(child, ROLLOUT_ID, stage, 4, nxt)
                )
                assert done.status_code == 200, done.text

        def completed(rollout: str) -> Callable[[], dict[str, Any]]:
            def check() -> dict[str, Any]:
                state = call(server, "GET", f"/rollouts/{rollout}").json()
                if state["state"] != "completed":
                    raise NotYet(state["state"])
                return dict(state)

            return check

        wait_for("the first rollout completed", completed(ROLLOUT_ID), log)
        status = call(server, "GET", f"/rollouts/{ROLLOUT_ID}/status").json()
        assert status["outcomes"] == {"rolled_out": CHILDREN}, status

        # -- the holder dies without a word: the lease is taken over -------------------------
        # Once it runs out, by the other worker or by the one the supervisor starts in the
        # dead one's place (a new process: the lease is a process's): one holder again, and
        # the ticks go on.
        holders_before = len(HOLDS.findall(log()))
        os.kill(pids[holder], signal.SIGKILL)
        until(
            "the supervisor started a new worker",
            lambda: len(STARTED.findall(log())) == 3 and "exited with -9" in log(),
            server,
        )
        until(
            "the lease taken over",
            lambda: len(HOLDS.findall(log())) > holders_before,
            server,
            within=LEASE_SECONDS + 20,
        )
        new_holder = HOLDS.findall(log())[-1]

        # Ticks go on under the new holder: a child that fetches a release and never reports
        # again times out at a tick (child_timeout), which completes the second rollout.
        second = "after-the-takeover"
        created = call(
            server,
            "POST",
            "/rollouts",
            json={
                "strategy": STRATEGY.replace(ROLLOUT_ID, second),
                "archive": base64.b64encode(archive()).decode("ascii"),
                "target": square(12, 42, 0.5),
                "policy": {"type": "global_incremental", "child_timeout": 1.0},
            },
        )
        assert created.status_code == 201, created.text
        child, area = ids[0], areas[0]
        offered = call(server, "POST", "/poll", json={"id": child, "geographic_area": area})
        assert offered.json()["new_release"] == second, offered.text
        fetched = call(server, "GET", "/release", params={"childID": child, "releaseID": second})
        assert fetched.status_code == 200, fetched.text
        wait_for("the second rollout completed", completed(second), log)
        status = call(server, "GET", f"/rollouts/{second}/status").json()
        assert status["outcomes"] == {"timed_out": 1}, status

        # One holder at a time: the lease lines name the first holder, then the next one.
        assert HOLDS.findall(log()) == [holder, new_holder], log()
        # The replacement worker serving (its signals taken over) before the stop: one still
        # starting dies of the SIGTERM without a "stopped" line, which the supervisor allows.
        until(
            "the replacement worker serving",
            lambda: log().count("application startup complete") >= 3,
            server,
        )
        assert server.terminate() == 0, log()
        text = log()
        assert "Traceback" not in text, text
        assert " ERROR " not in text, text
        assert text.count("stopped") >= 3, text  # the two workers, then the supervisor
    finally:
        server.kill()


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path, database: str) -> None:
    server = two_workers(tmp_path, database, "--owner", "orphan")
    try:
        pids = [int(pid) for _owner, _index, pid in WORKER.findall(server.stderr())]
        server.process.kill()  # SIGKILL: the supervisor says nothing to its workers
        server.process.wait(timeout=10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{pid}/stat") as stat:  # (a zombie until reaped: gone too)
                return stat.read().rpartition(")")[2].split()[0] == "Z"

        until("the workers stopped", lambda: all(gone(pid) for pid in pids), server, within=30)
        assert server.stderr().count("the supervisor (pid") == 2, server.stderr()
    finally:
        for pid in locals().get("pids", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.kill()


def test_workers_need_a_database_that_several_processes_share(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}

    for db, named in (("memory", "memory"), (f"sqlite:///{tmp_path / 'one.db'}", "sqlite")):
        done = subprocess.run(
            [sys.executable, "-m", "release_coordinator", "serve", "--db", db, "--workers", "2"],
            env={**env, "RC_OPERATOR_TOKENS": "ops=a-token-of-the-operators"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "--workers 2 needs a database that several processes share" in done.stderr
        assert f"not {named}" in done.stderr
