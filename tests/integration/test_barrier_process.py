"""Issue #16's first bug against a real ``release-coordinator serve`` process: children waiting
on a ``WaitForSignal`` barrier call only ``/end_stage``, and one child needs longer in the
canary than ``lost_after`` (70 s against 60 s when it was found; here 3.5 s against 1 s). The
waiting children must not be taken for lost: the barrier opens for them once the slow one is
lost, the slow one is told to end at once when it reports, and the rollout completes."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve_process import STRATEGY, NotYet, Server, archive, square, wait_for

pytestmark = pytest.mark.slow

LOST_AFTER = 1.0
SLOW_FOR = 3.5 * LOST_AFTER  # the slow child's canary: silent all along
RELEASE = "relay-rollout-1"  # the strategy's id


def summary() -> dict[str, Any]:
    times = {"median": 12.0, "minimum": 3.0, "maximum": 40.0}
    return {
        "proxy_times": times,
        "f1_times_summary": times,
        "f2_times_summary": times,
        "f1_err_rate": 0.0,
        "f2_err_rate": 0.0,
        "f1_calls": 900,
        "f2_calls": 100,
    }


def report(child: str, stage: str, status: int, next_stage: str = "") -> dict[str, Any]:
    return {
        "id": child,
        "release_id": RELEASE,
        "next_stage": next_stage,
        "stage_summaries": [{"stage_name": stage, "status": status, **summary()}],
    }


def test_a_barrier_longer_than_lost_after_opens_over_http(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    server = Server(
        tmp_path,
        env,
        tmp_path / "serve.log",
        "--db",
        "memory",
        "--allow-anonymous",
        "--lost-after",
        str(LOST_AFTER),
        "--tick-interval",
        "0.1",
    )
    try:
        with httpx.Client(base_url=server.base, timeout=10.0) as c:
            server.wait_ready(c)
            areas = [square(12 + k, 42, 1) for k in range(3)]
            ids = []
            for area in areas:
                answer = c.post("/poll", json={"id": "", "geographic_area": area})
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["id"])
            fast, slow = ids[:2], ids[2]
            created = c.post(
                "/rollouts",
                json={
                    "strategy": STRATEGY,
                    "archive": base64.b64encode(archive()).decode("ascii"),
                    "target": square(0, 30, 30),
                },
            )
            assert created.status_code == 201, created.text
            for child, area in zip(ids, areas, strict=True):
                offered = c.post("/poll", json={"id": child, "geographic_area": area}).json()
                assert offered["new_release"] == RELEASE, offered
                fetched = c.get("/release", params={"childID": child, "releaseID": RELEASE})
                assert fetched.status_code == 200, fetched.text
            for child in fast:
                assert c.post("/result", json=report(child, "canary", 2)).status_code == 200

            def ask(child: str) -> dict[str, Any]:
                body = {"id": child, "strategy_id": RELEASE, "stage_name": "canary"}
                answer = c.post("/end_stage", json=body)
                assert answer.status_code == 200, answer.text
                return dict(answer.json())

            # The fast two wait and ask (and never poll) while the slow one is silent.
            told: dict[str, float] = {}
            started = time.monotonic()
            while time.monotonic() - started < SLOW_FOR:
                for child in fast:
                    if child not in told and ask(child)["end_stage"]:
                        told[child] = time.monotonic() - started
                time.sleep(0.1)
            assert set(told) == set(fast), f"the barrier never opened\n{server.stderr()}"
            for child in fast:
                assert ask(child) == {"end_stage": True}  # not a roll-back
                c.post("/result", json=report(child, "canary", 4, "ab"))
                c.post("/result", json=report(child, "ab", 4, "rollout"))
            # The slow one reports at last: back from the lost, and told to end at once.
            assert c.post("/result", json=report(slow, "canary", 2)).status_code == 200
            assert ask(slow) == {"end_stage": True}
            for stage, status, nxt in (("canary", 4, "ab"), ("ab", 4, "rollout")):
                done = c.post("/result", json=report(slow, stage, status, nxt))
                assert done.status_code == 200, done.text

            def completed() -> dict[str, Any]:
                rollout = c.get(f"/rollouts/{RELEASE}").json()
                if rollout["state"] != "completed":
                    raise NotYet(rollout["state"])
                return dict(rollout)

            rollout = wait_for("the rollout completed", completed, server.stderr)
            assert "3 done, 0 failed" in rollout["reason"], rollout
            status = c.get(f"/rollouts/{RELEASE}/status").json()
            assert status["outcomes"] == {"rolled_out": 3}, status
        assert server.terminate() == 0
        log = server.stderr()
        assert "Traceback" not in log, log
        assert " ERROR " not in log, log
    finally:
        server.kill()
