"""End to end over real processes on 127.0.0.1: ``release-coordinator serve``, three task
services, a data release to ``published``, and an edge rollout through relays to ten children.

The processes (every one on 127.0.0.1 at a port the OS picks: ``serve --port 0``, the scripts
bind port 0 before uvicorn starts; each logs its address, which is read from its log):

- ``release-coordinator serve`` over a SQLite file: the Coordinator's API and the top
  RolloutManager's. Tokens from the environment: ``RC_OPERATOR_TOKENS`` (the test's operator
  token), ``RC_TASK_SERVICE_TOKEN`` (sent to the task services), ``RC_CALLBACK_TOKENS`` (one per
  service, keyed by its name).
- three task services (``_e2e_task_service.py``), each one TaskServiceKit behind
  ``task_service_app``: they require the coordinator's token, stage a release by writing a file
  and push their state changes back to the coordinator with their callback token.
- two relays (``_e2e_relay.py``), ``relay-west`` and ``relay-east``: a RolloutManager each, run
  as a Relay under ``HttpParent(serve)`` by ``rollout_app(manager, relay=relay, lifespan=True)``.
- ten children (``_e2e_leaf.py``): a SimulatedLeaf each, under ``HttpParent(its relay)``,
  stepping every 0.2 s; five in the region ``west`` (healthy) below ``relay-west``, five in
  ``east`` (``failing``) below ``relay-east``. Each prints its outcome as JSON and exits.

**Why two relays, not one.** A Relay is ONE child of its parent: it reports one aggregate per
stage for its whole subtree (``Completed`` only if every child below completed the stage, else
``Failure``), and when a stage failed below and rolls back, it aborts its local rollout to roll
the whole subtree back (``Relay._finish_stage``; FleetConfig in ``rollout/simulate.py``: "the
leaves expected to roll back are those below a child of the top manager that has a failing
leaf"). So under one relay over both regions the top manager sees a single child, Failed and
rolled back: it cannot show "west rolled out, east rolled back" at all. (Worse, the west leaves
are already in the A/B stage when the relay aborts, and the protocol reaches a child with a
roll-back only through ``/end_stage``, which only WaitForSignal stages call: they roll out
anyway, and the top's "rolled back" contradicts them.) With one relay per region, each region is
its own child of the top manager, with its own outcome.

**The strategy.** ``canary`` (WaitForSignal, 10% on the new version) then ``ab`` (A/B, 50%), both
rolling back on failure; their conditions are on the new version's error rate (<= 5%) and median
response time (< 40 ms); they end after 40 and 100 calls. A SimulatedLeaf serves 50 calls per
step and judges its stage after each step, once it served 20 calls: a failing leaf's new version
answers in 60+ ms, so it fails ``canary`` at its first step whatever the random draws; a healthy
leaf (error rate 0, 18..23 ms) waits on ``canary`` after one step, and once the top manager and
its relay let the stage end, completes ``ab`` in two steps and rolls out.

What is checked: the release published with every task published, the transitions in the event
list, the services' files; every child's own outcome (west rolled out after canary and ab, east
rolled back after canary); the top manager's view (relay-west Done/rolled out, relay-east
Failed/rolled back, per region with ``bbox``); each relay's own view of its five children; and
that ``serve`` exits 0 on SIGTERM. Deadlines bound every wait; nothing asserts on time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # never another address
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
READY_WITHIN = 30.0  # limits for waiting, never assertions on time
RELEASE_WITHIN = 30.0
ROLLOUT_WITHIN = 40.0
STOP_WITHIN = 10.0
SERVICES = ("portal", "search", "files")
STUDIES = ["SD_1", "SD_2"]
PER_REGION = 5
ROLLOUT_ID = "e2e-rollout-1"

T = TypeVar("T")


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


#: The regions: (relay, failing, area); the leaves sit in small squares inside them.
REGIONS = {
    "west": ("relay-west", False, square(0, 40, 10)),
    "east": ("relay-east", True, square(10, 40, 10)),
}
TARGET = square(0, 40, 20)  # both regions

STRATEGY = f"""\
id: "{ROLLOUT_ID}"
name: end-to-end
type: minor
functions:
  - name: checkout
    base_version: {{path: fns/checkout_v1, env: python}}
    new_version: {{path: fns/checkout_v2, env: python}}
stages:
  - name: canary
    type: WaitForSignal
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 90}}
      - {{name: new_version, trafficPercentage: 10}}
    metrics_conditions:
      - {{name: errorRate, threshold: "<=0.05"}}
      - {{name: responseTime, threshold: "<40", compareWith: Median}}
    end_conditions: [{{name: minCalls, threshold: "40"}}]
    end_action: {{onSuccess: ab, onFailure: rollback}}
  - name: ab
    type: A/B
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 50}}
      - {{name: new_version, trafficPercentage: 50}}
    metrics_conditions:
      - {{name: errorRate, threshold: "<=0.05"}}
      - {{name: responseTime, threshold: "<40", compareWith: Median}}
    end_conditions: [{{name: minCalls, threshold: "100"}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""

RELEASE_STATES = ["initializing", "running", "staged", "publishing", "published"]
TASK_STATES = ["initialized", "running", "staged", "publishing", "published"]


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for version in ("v1", "v2"):
            info = zipfile.ZipInfo(f"fns/checkout_{version}/fn.py", date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, f"def handler(request):\n    return {version!r}\n")
    return buffer.getvalue()


# -- processes ------------------------------------------------------------------------------------


class Process:
    """A child process with its stdout and stderr in files."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.stdout_path = cwd / f"{name}.out"
        self.stderr_path = cwd / f"{name}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self, most: int = 4000) -> str:
        text = f"-- {self.name} (exit {self.popen.poll()})"
        for label, body in (("stdout", self.stdout()), ("stderr", self.stderr())):
            if body.strip():
                shown = body if len(body) <= most else "..." + body[-most:]
                text += f"\n   [{label}]\n{shown.rstrip()}"
        return text

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=STOP_WITHIN)


class Processes:
    """Every process of the test, stopped at the end (the last started first)."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.all: list[Process] = []

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Process:
        process = Process(name, [sys.executable, *argv], self.tmp, {**self.env, **(env or {})})
        self.all.append(process)
        return process

    def logs(self, names: Callable[[str], bool] = lambda _: True) -> str:
        return "\n".join(p.log() for p in self.all if names(p.name))

    def stop_all(self) -> None:
        for process in reversed(self.all):
            try:
                process.stop()
            except Exception:  # keep stopping the others
                process.popen.kill()

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n\nlogs:\n{self.logs()}")


def base_of(process: Process, processes: Processes) -> str:
    """The base URL a process logged once it listens (it exited or never said: a failure)."""
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        found = LISTENING.search(process.stderr())
        if found:
            return f"http://{HOST}:{found[1]}"
        if not process.running():
            break
        time.sleep(0.05)
    raise processes.fail(f"{process.name} did not say where it listens")


class NotYet(Exception):
    """Raised by a :func:`wait_for` check: not yet, and what it saw."""


def wait_for(what: str, check: Callable[[], T | None], processes: Processes, within: float) -> T:
    """``check()``'s first truthy answer, polled until ``within`` seconds; a connection error
    or :class:`NotYet` counts as not yet. Fails (with every log and what the check saw last)
    when the deadline passes or a server process (not a leaf: it exits when done) exits."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        dead = [p.name for p in processes.all if not p.name.startswith("leaf") and not p.running()]
        if dead:
            raise processes.fail(f"waiting for {what}: {', '.join(dead)} exited")
        try:
            value = check()
        except (httpx.TransportError, NotYet) as error:
            value, last = None, error
        if value:
            return value
        time.sleep(0.1)
    raise processes.fail(f"no {what} within {within:g}s (last seen: {last!r})")


def answers(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> Callable[[], bool]:
    """A check for :func:`wait_for`: whether ``GET url`` answers 200."""
    return lambda: client.get(url, headers=headers).status_code == 200


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    env["PYTHONUNBUFFERED"] = "1"
    started = Processes(tmp_path, env)
    try:
        yield started
    finally:
        started.stop_all()


# -- the test --------------------------------------------------------------------------------------


def test_release_and_rollout_end_to_end(tmp_path: Path, processes: Processes) -> None:
    operator = secrets.token_urlsafe(24)
    service_token = secrets.token_urlsafe(24)
    callbacks = {name: secrets.token_urlsafe(24) for name in SERVICES}
    ops = {"Authorization": f"Bearer {operator}"}

    # -- the server --------------------------------------------------------------------------------
    serve = processes.start(
        "serve",
        "-m",
        "release_coordinator",
        "serve",
        "--db",
        f"sqlite:///{tmp_path / 'rc.db'}",
        "--host",
        HOST,
        "--port",
        "0",
        "--owner",
        "e2e",
        env={
            "RC_OPERATOR_TOKENS": f"e2e={operator}",
            "RC_TASK_SERVICE_TOKEN": service_token,
            "RC_CALLBACK_TOKENS": ",".join(f"{n}={t}" for n, t in callbacks.items()),
        },
    )
    server = base_of(serve, processes)

    # -- task services and relays start together -----------------------------------------------
    services = {
        name: processes.start(
            f"service-{name}",
            str(HERE / "_e2e_task_service.py"),
            "--name",
            name,
            "--out",
            str(tmp_path / name),
            "--coordinator",
            server,
            env={"RC_E2E_SERVICE_TOKEN": service_token, "RC_E2E_CALLBACK_TOKEN": callbacks[name]},
        )
        for name in SERVICES
    }
    relays = {
        region: processes.start(
            relay_id,
            str(HERE / "_e2e_relay.py"),
            "--parent",
            server,
            "--relay-id",
            relay_id,
            "--area",
            json.dumps(area),
            env={"RC_E2E_OPERATOR_TOKEN": operator},
        )
        for region, (relay_id, _, area) in REGIONS.items()
    }
    service_urls = {name: base_of(p, processes) for name, p in services.items()}
    relay_urls = {region: base_of(p, processes) for region, p in relays.items()}

    with httpx.Client(timeout=10.0) as client:
        wait_for(
            "GET /status of serve", answers(client, f"{server}/status"), processes, READY_WITHIN
        )
        for url in relay_urls.values():
            wait_for(
                f"GET {url}/rollouts",
                answers(client, f"{url}/rollouts", ops),
                processes,
                READY_WITHIN,
            )
        # -- the children: five per region, below their region's relay ---------------------------
        leaves: dict[str, list[Process]] = {}
        for region, (_, failing, area) in REGIONS.items():
            lon0 = area["coordinates"][0][0][0]
            leaves[region] = [
                processes.start(
                    f"leaf-{region}-{i + 1}",
                    str(HERE / "_e2e_leaf.py"),
                    "--parent",
                    relay_urls[region],
                    "--leaf-id",
                    f"{region}-{i + 1}",
                    "--area",
                    json.dumps(square(lon0 + 0.5 + 1.8 * i, 44, 1)),
                    "--deadline",
                    str(READY_WITHIN + ROLLOUT_WITHIN + RELEASE_WITHIN),
                    *(["--failing"] if failing else []),
                )
                for i in range(PER_REGION)
            ]

        # -- a data release, published across the three task services -----------------------------
        bearer = {"Authorization": f"Bearer {service_token}"}
        registered = {}
        for name, url in service_urls.items():
            wait_for(
                f"GET {url}/status",
                answers(client, f"{url}/status", bearer),
                processes,
                READY_WITHIN,
            )
            answer = client.post(
                f"{server}/task-services", json={"name": name, "url": url}, headers=ops
            )
            assert answer.status_code == 201, processes.fail(answer.text)
            service = answer.json()
            # registration asked GET /status with RC_TASK_SERVICE_TOKEN: the service answered
            assert service["health"]["status"] == "ok", service
            assert service["health"]["reported_name"] == name, service
            registered[service["id"]] = name

        created = client.post(
            f"{server}/releases",
            json={"name": "e2e release", "studies": STUDIES, "auto_publish": True},
            headers=ops,
        )
        assert created.status_code == 201, processes.fail(created.text)
        release_id = created.json()["id"]
        assert created.json()["author"] == "e2e"

        def finished_release() -> dict[str, Any]:
            release: dict[str, Any] = client.get(
                f"{server}/releases/{release_id}", headers=ops
            ).json()
            if release["state"] not in ("published", "failed", "canceled"):
                raise NotYet(release)
            return release

        release = wait_for("a finished release", finished_release, processes, RELEASE_WITHIN)
        assert release["state"] == "published", processes.fail(f"release: {release}")
        assert release["failure"] in (None, ""), release

        tasks = client.get(f"{server}/releases/{release_id}/tasks", headers=ops).json()["items"]
        assert sorted(registered[t["task_service_id"]] for t in tasks) == sorted(SERVICES)
        assert {t["state"] for t in tasks} == {"published"}, tasks
        assert {t["progress"] for t in tasks} == {100}, tasks

        events = client.get(
            f"{server}/events",
            params={"release_id": release_id, "kind": "transition", "limit": 1000},
            headers=ops,
        ).json()["items"]
        of_release = [e["state"] for e in events if e["task_id"] is None]
        assert of_release == RELEASE_STATES, events
        for task in tasks:
            of_task = [e["state"] for e in events if e["task_id"] == task["id"]]
            assert of_task == TASK_STATES, (task, events)
        assert all(e["type"] == "info" for e in events), events

        for name in SERVICES:  # each service staged and published its own task
            folder = tmp_path / name / release_id
            staged = json.loads((folder / "staged.json").read_text())
            published = json.loads((folder / "published.json").read_text())
            assert staged["service"] == published["service"] == name
            assert staged["studies"] == STUDIES
            assert staged["task_id"] in {t["id"] for t in tasks}

        # -- the rollout: every node registered first ----------------------------------------------
        def relay_children(region: str) -> list[dict[str, Any]]:
            answer = client.get(f"{relay_urls[region]}/children", headers=ops)
            return list(answer.json()["items"]) if answer.status_code == 200 else []

        def registered_tree() -> dict[str, Any]:
            top = client.get(f"{server}/children", headers=ops).json()["items"]
            counts = {c["id"]: c["number_of_children"] for c in top}
            below = {region: len(relay_children(region)) for region in REGIONS}
            expected = {relay_id: PER_REGION for relay_id, _, _ in REGIONS.values()}
            if counts != expected or set(below.values()) != {PER_REGION}:
                raise NotYet({"top": counts, "below the relays": below})
            return counts

        wait_for("every child registered", registered_tree, processes, READY_WITHIN)

        created = client.post(
            f"{server}/rollouts",
            json={
                "strategy": STRATEGY,
                "archive": base64.b64encode(archive()).decode("ascii"),
                "target": TARGET,
                "name": "e2e rollout",
            },
            headers=ops,
        )
        assert created.status_code == 201, processes.fail(created.text)
        assert created.json()["id"] == ROLLOUT_ID
        assert created.json()["state"] == "active"

        # -- the children end the release and exit ------------------------------------------------
        everyone = [leaf for region in REGIONS for leaf in leaves[region]]

        def all_exited() -> bool:
            running = [leaf.name for leaf in everyone if leaf.running()]
            if running:
                raise NotYet(f"still running: {', '.join(running)}")
            return True

        wait_for("every child to finish and exit", all_exited, processes, ROLLOUT_WITHIN)
        for leaf in everyone:
            assert leaf.popen.returncode == 0, processes.fail(f"{leaf.name} failed")

        # their own outcomes, per region
        for region, (_, failing, _) in REGIONS.items():
            for leaf in leaves[region]:
                report = json.loads(leaf.stdout().strip().splitlines()[-1])
                assert report["release_id"] == ROLLOUT_ID, report
                assert report["failing"] is failing
                if failing:
                    assert (report["outcome"], report["stages"]) == ("rolled_back", ["canary"])
                else:
                    assert (report["outcome"], report["stages"]) == (
                        "rolled_out",
                        ["canary", "ab"],
                    ), processes.fail(f"{leaf.name}: {report}")

        # -- the top manager (serve): each relay is ONE child, with its subtree's outcome ----------
        def settled_top() -> dict[str, dict[str, Any]]:
            rows = client.get(f"{server}/rollouts/{ROLLOUT_ID}/children", headers=ops).json()
            by_id = {row["child_id"]: row for row in rows["items"]}
            statuses = {child: row["status"] for child, row in by_id.items()}
            if len(by_id) != len(REGIONS) or not set(statuses.values()) <= {"Done", "Failed"}:
                raise NotYet(statuses)
            return by_id

        top = wait_for("the top manager to settle", settled_top, processes, ROLLOUT_WITHIN)
        west, east = top["relay-west"], top["relay-east"]
        assert (west["status"], west["outcome"]) == ("Done", "rolled_out"), top
        assert {name: s["status"] for name, s in west["stages"].items()} == {
            "canary": "Completed",
            "ab": "Completed",
        }, top
        assert (east["status"], east["outcome"]) == ("Failed", "rolled_back"), top
        assert east["stages"]["canary"]["status"] == "Failure", top
        # the relay weighs its subtree's calls into one summary: every leaf served 50 a step
        canary = west["stages"]["canary"]["summary"]
        assert canary["f1_calls"] + canary["f2_calls"] >= PER_REGION * 50, canary

        status = client.get(f"{server}/rollouts/{ROLLOUT_ID}/status", headers=ops).json()
        # not aborted (no code path of RolloutManager sets "completed" yet: a rollout stays
        # active, offering the release to children that register later)
        assert status["rollout"]["state"] in ("active", "completed"), status
        assert status["statuses"] == {"Done": 1, "Failed": 1}, status
        assert status["outcomes"] == {"rolled_out": 1, "rolled_back": 1}, status
        assert status["lost"] == [], status
        for region, expected in (("west", "rolled_out"), ("east", "rolled_back")):
            (lon0, lat0), (lon1, lat1) = (REGIONS[region][2]["coordinates"][0][i] for i in (0, 2))
            narrowed = client.get(
                f"{server}/rollouts/{ROLLOUT_ID}/status",
                params={"bbox": f"{lon0},{lat0},{lon1},{lat1}"},
                headers=ops,
            ).json()
            assert narrowed["children"] == 1, narrowed
            assert narrowed["outcomes"] == {expected: 1}, narrowed

        # -- each relay's own view: its five children ----------------------------------------------
        for region, (relay_id, failing, _) in REGIONS.items():
            url = relay_urls[region]
            rows = client.get(f"{url}/rollouts/{ROLLOUT_ID}/children", headers=ops).json()
            outcomes = {row["child_id"]: (row["status"], row["outcome"]) for row in rows["items"]}
            expected_row = ("Failed", "rolled_back") if failing else ("Done", "rolled_out")
            assert outcomes == {f"{region}-{i + 1}": expected_row for i in range(PER_REGION)}, (
                processes.fail(f"{relay_id}: {rows}")
            )
            local = client.get(f"{url}/rollouts/{ROLLOUT_ID}", headers=ops).json()
            assert local["gated"] is True, local  # the parent opens its barriers
            assert local["target"] == TARGET, local  # the top's target_area

    # -- serve stops cleanly on SIGTERM ------------------------------------------------------------
    for process in processes.all:
        if process is not serve:
            process.stop()
    assert serve.stop() == 0, processes.fail("serve did not exit 0 after SIGTERM")
    assert operator not in serve.stderr()
    assert "Traceback" not in serve.stderr(), processes.fail("serve logged a traceback")
