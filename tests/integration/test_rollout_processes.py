"""Two RolloutManager processes over one PostgreSQL database serve the same fleet.

Each manager is a real uvicorn process (``_rollout_server.py``) on 127.0.0.1 over a
:class:`~release_coordinator.storage.sql.SQLRolloutStore`. Children register, fetch and report
through either of them at random; for every child, the two processes receive conflicting
results for the same stage at the same moment. No update is lost: exactly one of the two is
taken (the other is refused with 409), the stored state is the winner's, the barrier opens on
the children that wait whichever process they wait on, and both processes report the same
rollout at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_support import HOST, free_port, stop
from rollout_store_support import archive, square
from sql_support import postgres_schema

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.anyio]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
READY_WITHIN = 20.0
CHILDREN = 40

STRATEGY = """\
id: "race-1"
name: race
type: minor
functions:
  - name: checkout
    base_version: {path: fns/checkout_v1, env: nodejs}
    new_version: {path: fns/checkout_v2, env: nodejs}
stages:
  - name: canary
    type: WaitForSignal
    func_name: checkout
    variants:
      - {name: base_version, trafficPercentage: 90}
      - {name: new_version, trafficPercentage: 10}
    metrics_conditions: [{name: errorRate, threshold: "<=0.01"}]
    end_conditions: [{name: minCalls, threshold: "20"}]
    end_action: {onSuccess: ab, onFailure: rollback}
  - name: ab
    type: A/B
    func_name: checkout
    variants:
      - {name: base_version, trafficPercentage: 50}
      - {name: new_version, trafficPercentage: 50}
    metrics_conditions: [{name: errorRate, threshold: "<0.05"}]
    end_conditions: [{name: minCalls, threshold: "10"}]
    end_action: {onSuccess: rollout, onFailure: rollback}
rollback: {action: {function: base_version}}
"""


def _result(child: str, stage: str, status: int, next_stage: str = "") -> dict[str, Any]:
    times = {"median": 12.0, "minimum": 3.0, "maximum": 40.0}
    summary = {
        "proxy_times": times,
        "f1_times_summary": times,
        "f2_times_summary": times,
        "f1_err_rate": 0.0,
        "f2_err_rate": 0.0,
        "f1_calls": 90,
        "f2_calls": 10,
    }
    return {
        "id": child,
        "release_id": "race-1",
        "next_stage": next_stage,
        "stage_summaries": [{"stage_name": stage, "status": status, **summary}],
    }


def _start(db: str, token: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    for _attempt in range(3):  # a port found free can be taken before uvicorn binds it
        port = free_port()
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, str(HERE / "_rollout_server.py"), "--db", db, "--port", str(port)],
                cwd=ROOT,
                env={**os.environ, "RC_TEST_TOKEN": token},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(
                    f"{base}/rollouts", headers={"Authorization": f"Bearer {token}"}, timeout=1.0
                )
                if answer.status_code == 200:
                    return process, base
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        stop(process)
    raise AssertionError("a manager never started:\n" + log.read_text(errors="replace"))


@pytest.fixture
def managers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    token = secrets.token_urlsafe(16)
    with postgres_schema(postgres_url) as db:
        # One process creates the schema first (the second would wait on its lock anyway).
        first, a = _start(db, token, tmp_path / "a.log")
        try:
            second, b = _start(db, token, tmp_path / "b.log")
            try:
                yield a, b, token
            finally:
                stop(second)
        finally:
            stop(first)


async def test_two_managers_never_lose_an_update(managers: tuple[str, str, str]) -> None:
    a, b, token = managers
    operator = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=20.0) as http:
        created = await http.post(
            f"{a}/rollouts",
            headers=operator,
            json={
                "strategy": STRATEGY,
                "archive": base64.b64encode(archive()).decode(),
                "target": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 50], [0, 0]]],
                },
                "policy": {"type": "global_incremental", "quorum": 1.0},
            },
        )
        assert created.status_code == 201, created.text

        # Children register and fetch through either manager.
        children = [f"child-{i:02d}" for i in range(CHILDREN)]
        servers = {c: (a, b) if i % 2 else (b, a) for i, c in enumerate(children)}

        async def register(child: str, i: int) -> None:
            first, second = servers[child]
            body = {"id": child, "geographic_area": square(i % 40, 5), "number_of_children": 0}
            polled = await http.post(f"{first}/poll", json=body)
            assert polled.status_code == 200, polled.text
            # The other manager learns of the rollout within its refresh: poll until offered.
            for _ in range(200):
                again = await http.post(f"{second}/poll", json=body)
                assert again.status_code == 200, again.text
                if again.json()["new_release"] == "race-1":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{child} was never offered race-1 by {second}")
            fetched = await http.get(
                f"{second}/release", params={"childID": child, "releaseID": "race-1"}
            )
            assert fetched.status_code == 200, fetched.text

        await asyncio.gather(*(register(c, i) for i, c in enumerate(children)))

        async def state_of(base: str) -> dict[str, Any]:
            answer = await http.get(
                f"{base}/rollouts/race-1/children", headers=operator, params={"limit": 1000}
            )
            assert answer.status_code == 200, answer.text
            return {row["child_id"]: row for row in answer.json()["items"]}

        async def race(first: dict[str, Any], second: dict[str, Any]) -> int:
            """Post ``first`` to one manager and ``second`` to the other at the same moment:
            exactly one is taken (the other is judged against the winner's state and
            refused), and the index of the winner is returned."""
            answers = await asyncio.gather(
                http.post(f"{a}/result", json=first), http.post(f"{b}/result", json=second)
            )
            codes = [r.status_code for r in answers]
            assert sorted(codes) == [200, 409], [(r.status_code, r.text) for r in answers]
            return codes.index(200)

        # Half of the children: "canary failed" and "canary errored" at once.
        racers, runners = children[::2], children[1::2]
        first_won = {}
        for child, winner in zip(
            racers,
            await asyncio.gather(
                *(
                    race(_result(c, "canary", 5, "rollback"), _result(c, "canary", 6, "rollback"))
                    for c in racers
                )
            ),
            strict=True,
        ):
            first_won[child] = winner == 0

        # The others wait on the canary barrier, through either manager.
        for i, child in enumerate(runners):
            waited = await http.post(f"{(a, b)[i % 2]}/result", json=_result(child, "canary", 2))
            assert waited.status_code == 200, waited.text

        for base in (a, b):
            rows = await state_of(base)
            assert sorted(rows) == sorted(children)
            for child in racers:
                assert rows[child]["status"] == "Failed", rows[child]
                assert rows[child]["outcome"] == "rolled_back"
                want = "Failure" if first_won[child] else "Error"
                assert rows[child]["stages"]["canary"]["status"] == want, rows[child]
            for child in runners:
                assert rows[child]["status"] == "Doing", rows[child]
                # (the barrier may have opened already: every child taking part waits)
                assert rows[child]["stages"]["canary"]["status"] in ("SuccessWaiting", "ShouldEnd")

        # The barrier opens for every waiting child, whichever manager each one asks.
        async def until_told(child: str, i: int) -> None:
            base = (b, a)[i % 2]
            for _ in range(200):
                answer = await http.post(
                    f"{base}/end_stage",
                    json={"id": child, "strategy_id": "race-1", "stage_name": "canary"},
                )
                assert answer.status_code == 200, answer.text
                if answer.json()["end_stage"]:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{child} was never told to end the canary stage")

        await asyncio.gather(*(until_told(c, i) for i, c in enumerate(runners)))

        # Told to end: "canary completed, on to ab" and "canary failed" at once.
        winners = await asyncio.gather(
            *(
                race(_result(c, "canary", 4, "ab"), _result(c, "canary", 5, "rollback"))
                for c in runners
            )
        )
        completed = [c for c, w in zip(runners, winners, strict=True) if w == 0]
        rolled_back = [c for c, w in zip(runners, winners, strict=True) if w == 1]
        for i, child in enumerate(completed):
            out = await http.post(
                f"{(b, a)[i % 2]}/result", json=_result(child, "ab", 4, "rollout")
            )
            assert out.status_code == 200, out.text

        reports = []
        for base in (a, b):
            rows = await state_of(base)
            for child in completed:
                assert (rows[child]["status"], rows[child]["outcome"]) == ("Done", "rolled_out")
                assert rows[child]["stages"]["ab"]["status"] == "Completed"
            for child in rolled_back:
                assert (rows[child]["status"], rows[child]["outcome"]) == ("Failed", "rolled_back")
                assert rows[child]["stages"]["canary"]["status"] == "Failure"
            status = await http.get(f"{base}/rollouts/race-1/status", headers=operator)
            assert status.status_code == 200, status.text
            body = status.json()
            reports.append((body["statuses"], body["outcomes"], body["stages"]))
        assert reports[0] == reports[1]
        statuses, outcomes, _stages = reports[0]
        failed = len(racers) + len(rolled_back)
        assert statuses == {
            k: v for k, v in {"Done": len(completed), "Failed": failed}.items() if v
        }
        assert outcomes == {
            k: v for k, v in {"rolled_out": len(completed), "rolled_back": failed}.items() if v
        }
