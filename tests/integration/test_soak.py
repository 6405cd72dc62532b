"""The soak test (issue #16): one ``release-coordinator serve`` under both halves' load for a
couple of minutes, with faulty task services and an operator acting at random.

The processes, all on 127.0.0.1 at ports the OS picks:

- ``release-coordinator serve`` over a SQLite file (tokens from the environment:
  ``RC_OPERATOR_TOKENS``, ``RC_TASK_SERVICE_TOKEN``, ``RC_CALLBACK_TOKENS``), serving the
  Coordinator's API and the RolloutManager's;
- ``_soak_task_services.py``: four task services (TaskServiceKits behind ``task_service_app``)
  in one process, pushing their state changes back as callbacks, with injected faults:
  ``steady`` (none), ``flaky`` (502/504, time-outs past the coordinator's 10 s, dropped
  connections: all transient), ``early`` (callbacks that arrive before the answer to
  ``start``/``publish``; some dropped connections), ``broken`` (some 500s and rejections:
  releases fail), registered over the operator API;
- ``_soak_children.py``: :data:`CHILDREN` SimulatedLeafs over HttpParent in one asyncio process
  (one httpx client, a bounded pool) polling ``/poll`` every :data:`INTERVAL` seconds with an
  area each; every tenth one fails the new version and rolls back.

The test process is the operator: it creates two rollouts (one over the western half of the
children, then one over all of them), creates :data:`RELEASES` releases over the run (some
auto-publishing), and at random publishes or cancels them (some right after their creation,
some as concurrent publish+cancel pairs, some cancels racing an accepted publish), recording
every answer. Then it publishes or cancels whatever is left staged, waits (within limits) for
every release to finish and for both rollouts to complete, stops the children and reads the
records over the API (kept in ``records.json`` beside the processes' logs in ``tmp_path``).

What is checked (never how long anything took):

- no answer of the server was a 5xx, to the operator, to the children or to the task
  services' callbacks, nor in the server's own access log; every operator request got an
  answer (children's requests that got none within their 10 s, or whose connection broke, are
  counted in the report, not judged: a child tries again at its next step); the server's log
  has no traceback and no ERROR line; no operator action was refused with
  ``409 concurrent_update`` (a race the coordinator must resolve itself);
- every accepted (200) publish/cancel answered the state it asked for, and its effect is in
  the final state: a canceled release had an accepted cancel, an accepted cancel's release is
  canceled or failed, an accepted publish's release is published, failed (with a recorded
  failure) or canceled by a later accepted cancel; nothing was published after a cancel;
- every release's event log (over the API) is a path of the release machine from ``waiting``
  with one final state, its last, equal to the release's state, and every ``requested`` user
  action in it is followed by its transition; every task's log is a path of the task machine
  ending in the task's state, and the tasks' states agree with the release's final state;
  no two releases hold the same version;
- every child's own outcome of each rollout is what the manager recorded for it, every child
  of a rollout's target finished it, none is lost, and both rollouts completed;
- the server's resident memory (``VmRSS``) at the end is within 20% of its value after the
  warm-up (a leak check, not a timing one).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import io
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from process_support import HOST

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

HERE = Path(__file__).resolve().parent
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
ACCESS_5XX = re.compile(r'release_coordinator\.access: .*" (5\d\d) ')

SERVICES = ("steady", "flaky", "early", "broken")  # as in _soak_task_services.PROFILES
CHILDREN = 500
INTERVAL = 4.0  # seconds between two steps of a child: ~150-250 requests/s in all
RELEASES = 20
CREATE_EVERY = 3.0  # seconds between two new releases
OPERATE_FOR = 65.0  # seconds of random operator actions from the first release on
WARM_UP = 35.0  # seconds into the load: the memory figure the end is compared with
MEMORY_BOUND = 0.20
TIMEOUT_SLEEP = 11.0  # a task service's "time-out": past the coordinator's 10 s per request
# Limits for waiting, never assertions on time:
READY_WITHIN = 30.0
REGISTERED_WITHIN = 40.0
# Seconds into the load: every release finished by then (the last one is created at ~60 s; a
# request to a faulty service may take four attempts of 10 s each before it counts as failed;
# a loaded machine needs more: these are waits that end as soon as everything finished).
RELEASES_BY = 240.0
ROLLOUTS_BY = 260.0  # ... and both rollouts (else the checks say what is missing)
STOP_WITHIN = 20.0

FINAL = {"published", "canceled", "failed"}
ACTIVE = ("waiting", "initializing", "running", "staged", "publishing")
#: The release machine of the task-service protocol, as pairs (from, to).
RELEASE_STEPS = {
    ("waiting", "initializing"),
    ("waiting", "staged"),
    ("initializing", "running"),
    ("running", "staged"),
    ("staged", "publishing"),
    ("publishing", "published"),
    ("canceling", "canceled"),
    ("canceling", "failed"),
    *((state, "canceling") for state in ACTIVE),
    *((state, "failed") for state in ACTIVE),
}
TASK_FINAL = {"canceled", "failed", "rejected"}
TASK_LIVE = ("waiting", "initialized", "running", "staged", "publishing", "published")
TASK_STEPS = {
    ("waiting", "initialized"),
    ("waiting", "rejected"),
    ("initialized", "running"),
    ("running", "staged"),
    ("staged", "publishing"),
    ("publishing", "published"),
    *((state, "failed") for state in TASK_LIVE),
    *((state, "canceled") for state in TASK_LIVE),
}

STRATEGY = """\
id: "{id}"
name: soak
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
    end_conditions:
      - {{name: minDuration, threshold: 8s}}
      - {{name: minCalls, threshold: "40"}}
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
    end_conditions:
      - {{name: minDuration, threshold: 8s}}
      - {{name: minCalls, threshold: "100"}}
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def box(lon0: float, lat0: float, lon1: float, lat1: float) -> dict[str, Any]:
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return {"type": "Polygon", "coordinates": [ring]}


#: The children sit on a grid of 25 columns from longitude 0 and latitude 30 (see
#: ``_soak_children.area_of``): rollout ``soak-west`` reaches columns 0..12, ``soak-all`` all.
ROLLOUTS = {
    "soak-west": box(-0.5, 29.5, 12.5, 30.5 + CHILDREN // 25),
    "soak-all": box(-0.5, 29.5, 25.5, 30.5 + CHILDREN // 25),
}


def in_target(rollout_id: str, index: int) -> bool:
    return rollout_id == "soak-all" or index % 25 <= 12


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
            self.popen = subprocess.Popen(
                [sys.executable, *argv], cwd=cwd, env=env, stdout=out, stderr=err
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, most: int = 3000) -> str:
        text = self.stderr()
        return f"-- {self.name} (exit {self.popen.poll()}):\n{text[-most:]}"

    def base_url(self) -> str:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            found = LISTENING.search(self.stderr())
            if found:
                return f"http://{HOST}:{found[1]}"
            if not self.running():
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not say where it listens\n{self.tail()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=STOP_WITHIN)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in reversed(processes):
        try:
            process.stop()
        except Exception:  # keep stopping the others
            process.popen.kill()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (for the report, never asserted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the operator's records ---------------------------------------------------------------------


@attrs.define
class Action:
    """One publish or cancel request and its answer."""

    release_id: str
    kind: str  # "publish" | "cancel"
    sent: float
    answered: float = 0.0
    status: int = 0  # 0: no answer (a transport error)
    code: str = ""
    state: str = ""
    why: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == 200


class Client:
    """The operator's httpx client: counts every answer, keeps every 5xx and every failure."""

    def __init__(self, base: str, token: str) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.server_errors: list[str] = []
        self.failures: list[str] = []
        self.http = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=20),
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        try:
            answer = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            self.failures.append(f"{method} {path}: {type(error).__name__}: {error}")
            return None
        self.statuses[answer.status_code] += 1
        if answer.status_code >= 500:
            self.server_errors.append(f"{method} {path} {answer.status_code} {answer.text[:500]}")
        return answer

    async def json(self, method: str, path: str, want: int = 200, **kwargs: Any) -> Any:
        answer = await self.request(method, path, **kwargs)
        assert answer is not None, self.failures[-1]
        assert answer.status_code == want, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    async def every(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged listing."""
        items: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = await self.json("GET", path, params={**params, "limit": 1000, "offset": offset})
            items.extend(page["items"])
            offset = page["next_offset"]
        return items


class Operator:
    """Creates releases and publishes or cancels them at random, recording every answer."""

    def __init__(self, client: Client, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.releases: dict[str, dict[str, Any]] = {}  # id -> the release as created
        self.states: dict[str, str] = {}  # id -> its state as last seen
        self.actions: list[Action] = []
        self.created_at: dict[str, float] = {}

    async def create(self, i: int) -> str:
        body = {
            "name": f"soak-{i:02d}",
            "studies": [f"SD_{i}", "SD_common"],
            "tags": ["soak"],
            "auto_publish": i % 4 == 3,
        }
        release = await self.client.json("POST", "/releases", want=201, json=body)
        self.releases[release["id"]] = release
        self.states[release["id"]] = release["state"]
        self.created_at[release["id"]] = time.monotonic()
        return str(release["id"])

    async def act(self, release_id: str, kind: str) -> Action:
        action = Action(release_id, kind, time.monotonic())
        self.actions.append(action)
        body = {"reason": "soak operator"} if kind == "cancel" else {}
        answer = await self.client.request("POST", f"/releases/{release_id}/{kind}", json=body)
        action.answered = time.monotonic()
        if answer is None:
            action.why = self.client.failures[-1]
            return action
        action.status = answer.status_code
        try:
            payload = answer.json()
        except ValueError:
            payload = {}
        if answer.status_code == 200:
            action.state = payload.get("state", "")
            self.states[release_id] = action.state
        elif isinstance(payload.get("error"), dict):
            action.code = str(payload["error"].get("code", ""))
            action.why = str(payload["error"].get("message", ""))[:300]
        return action

    async def refresh(self) -> None:
        answer = await self.client.request("GET", "/releases", params={"limit": 1000})
        if answer is not None and answer.status_code == 200:
            for release in answer.json()["items"]:
                if release["id"] in self.releases:
                    self.states[release["id"]] = release["state"]

    def unfinished(self) -> list[str]:
        return [rid for rid in self.releases if self.states.get(rid) not in FINAL]

    async def random_action(self) -> None:
        unfinished = self.unfinished()
        staged = [rid for rid in unfinished if self.states.get(rid) == "staged"]
        if staged and self.rng.random() < 0.7:
            pool = staged
        elif unfinished and self.rng.random() < 0.9:
            pool = unfinished
        else:
            pool = list(self.releases)  # (finished ones too: a repeat, or a refusal)
        if not pool:
            return
        release_id = self.rng.choice(pool)
        roll = self.rng.random()
        if self.states.get(release_id) == "staged":
            if roll < 0.15:  # both at once: the cancel may come first, or second
                await asyncio.gather(
                    self.act(release_id, "publish"), self.act(release_id, "cancel")
                )
                return
            kind = "publish" if roll < 0.9 else "cancel"
        else:
            kind = "cancel" if roll < 0.06 else "publish"
        action = await self.act(release_id, kind)
        if action.accepted and kind == "publish" and self.rng.random() < 0.3:
            # ... and a cancel racing the publication (it may come before or after the end)
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            await self.act(release_id, "cancel")

    async def soon_after_creation(self, release_id: str) -> None:
        """A cancel or publish racing the release's first steps."""
        await asyncio.sleep(self.rng.uniform(0.0, 2.0))
        await self.act(release_id, self.rng.choice(("cancel", "publish")))


# -- the checks -----------------------------------------------------------------------------------


def check_release(
    release: dict[str, Any],
    tasks: list[dict[str, Any]],
    events: list[dict[str, Any]],
    actions: list[Action],
) -> list[str]:
    """What is wrong with one finished release, its tasks, its event log and the operator's
    accepted actions on it (an empty list: nothing)."""
    rid, state = release["id"], release["state"]
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(f"{rid} ({release['name']}, {state}): {text}")

    if state not in FINAL:
        problem("not finished")
    accepted = [a for a in actions if a.accepted]
    cancels = [a for a in accepted if a.kind == "cancel"]
    publishes = [a for a in accepted if a.kind == "publish"]
    for a in cancels:
        if a.state not in ("canceling", "canceled"):
            problem(f"an accepted cancel answered state {a.state!r}")
    for a in publishes:
        if a.state not in ("publishing", "published"):
            problem(f"an accepted publish answered state {a.state!r}")
    if cancels and state not in ("canceled", "failed"):
        problem("a cancel was accepted, yet the release did not end canceled or failed")
    if state == "canceled" and not cancels:
        problem("canceled, yet no cancel was accepted")
    if state == "published" and not publishes and not release["auto_publish"]:
        problem("published, yet no publish was accepted and it does not publish itself")
    if state == "failed" and not release.get("failure"):
        problem("failed without a recorded failure")
    for p in publishes:
        if any(c.answered < p.sent for c in cancels):
            problem("a publish was accepted after a cancel had been accepted")
        if state == "canceled" and not any(c.sent > p.sent for c in cancels):
            problem("an accepted publish's release ended canceled without a later cancel")

    # -- the release's own transitions ----------------------------------------------------------
    mine = [e for e in events if e["task_id"] is None]
    path = [e["state"] for e in mine if e["kind"] == "transition"]
    steps = list(zip(["waiting", *path], path, strict=False))
    wrong = [s for s in steps if s not in RELEASE_STEPS]
    if wrong:
        problem(f"transitions the release machine does not have: {wrong} in {path}")
    if cancels and "canceling" not in path:
        problem(f"a cancel was accepted, yet its log's transitions {path} never reach canceling")
    if publishes and "publishing" not in path:
        problem(f"a publish was accepted, yet its log's transitions {path} never reach publishing")
    finals = [s for s in path if s in FINAL]
    if len(finals) != 1 or not path or path[-1] != state:
        problem(f"its log's transitions {path} do not end in exactly one final state, {state}")
    # Every "requested" user action is followed by its transition (one each).
    for kind, into in (("publish", "publishing"), ("cancel", "canceling")):
        requested = [
            e
            for e in mine
            if e["kind"] == "user_action" and e["message"].startswith(f"{kind} of release")
        ]
        by_user = [
            e
            for e in mine
            if e["kind"] == "transition" and e["state"] == into and e["type"] == "info"
        ]
        if into == "publishing":  # an automatic publish is not the user's
            by_user = [e for e in by_user if "(automatic)" not in e["message"]]
        if len(requested) != len(by_user):
            problem(
                f"{len(requested)} {kind} request(s) logged, {len(by_user)} such transition(s): "
                + "; ".join(e["message"] for e in requested + by_user)
            )

    # -- its tasks ------------------------------------------------------------------------------
    for task in tasks:
        trail = [
            e["state"] for e in events if e["task_id"] == task["id"] and e["kind"] == "transition"
        ]
        moves = list(zip(["waiting", *trail], trail, strict=False))
        wrong = [m for m in moves if m not in TASK_STEPS]
        if wrong:
            problem(f"task {task['id']}: transitions the task machine does not have: {wrong}")
        if (trail[-1] if trail else "waiting") != task["state"]:
            problem(f"task {task['id']} is {task['state']} but its log says {trail}")
        if state == "published" and task["state"] != "published":
            problem(f"task {task['id']} is {task['state']}")
        if state in ("canceled", "failed") and task["state"] not in TASK_FINAL:
            problem(f"task {task['id']} is {task['state']}")
    return problems


def spans(children: dict[str, Any], rollout_id: str) -> tuple[float, float, float] | None:
    """When the children first and last fetched a rollout and last ended it (for the report)."""
    runs = [c["outcomes"][rollout_id] for c in children.values() if rollout_id in c["outcomes"]]
    if not runs:
        return None
    starts = [r["started"] for r in runs]
    return min(starts), max(starts), max(r["ended"] for r in runs)


# -- the test --------------------------------------------------------------------------------------


async def test_soak(tmp_path: Path, started: list[Process]) -> None:
    operator_token = secrets.token_urlsafe(24)
    service_token = secrets.token_urlsafe(24)
    callbacks = {name: secrets.token_urlsafe(24) for name in SERVICES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    env["PYTHONUNBUFFERED"] = "1"
    rng = random.Random(16)

    serve = Process(
        "serve",
        [
            *("-m", "release_coordinator", "serve"),
            *("--db", f"sqlite:///{tmp_path / 'soak.db'}"),
            *("--host", HOST, "--port", "0", "--owner", "soak"),
        ],
        tmp_path,
        {
            **env,
            "RC_OPERATOR_TOKENS": f"soak={operator_token}",
            "RC_TASK_SERVICE_TOKEN": service_token,
            "RC_CALLBACK_TOKENS": ",".join(f"{n}={t}" for n, t in callbacks.items()),
        },
    )
    started.append(serve)
    server = serve.base_url()
    services = Process(
        "services",
        [
            str(HERE / "_soak_task_services.py"),
            *("--coordinator", server, "--stats", str(tmp_path / "services.json")),
            *("--timeout-sleep", str(TIMEOUT_SLEEP)),
        ],
        tmp_path,
        {
            **env,
            "RC_SOAK_SERVICE_TOKEN": service_token,
            **{f"RC_SOAK_CALLBACK_{n.upper()}": t for n, t in callbacks.items()},
        },
    )
    started.append(services)
    services_url = services.base_url()
    stop_file = tmp_path / "children.stop"
    children: Process | None = None

    def logs() -> str:
        return "\n".join(p.tail() for p in started)

    async def stop_children() -> None:
        stop_file.touch()
        deadline = time.monotonic() + STOP_WITHIN
        while children and children.running() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        if children and children.running():
            children.stop()

    client = Client(server, operator_token)
    try:
        # -- ready: the server answers, the task services are registered ----------------------
        deadline = time.monotonic() + READY_WITHIN
        while (await client.request("GET", "/status")) is None:
            assert time.monotonic() < deadline, logs()
            assert serve.running(), logs()
            await asyncio.sleep(0.1)
        client.failures.clear()  # (refused connections before it listened)
        for name in SERVICES:
            deadline = time.monotonic() + READY_WITHIN
            while True:
                answer = await client.request(
                    "POST", "/task-services", json={"name": name, "url": f"{services_url}/{name}"}
                )
                assert answer is not None, logs()
                if answer.status_code == 201:
                    break
                assert time.monotonic() < deadline, f"{answer.text}\n{logs()}"
                await asyncio.sleep(0.2)

        # -- the children register ----------------------------------------------------------------
        children = Process(
            "children",
            [
                str(HERE / "_soak_children.py"),
                *("--parent", server, "--children", str(CHILDREN), "--interval", str(INTERVAL)),
                *("--stop", str(stop_file), "--out", str(tmp_path / "children.json")),
            ],
            tmp_path,
            env,
        )
        started.append(children)
        deadline = time.monotonic() + REGISTERED_WITHIN
        while len(await client.every("/children")) < CHILDREN:
            assert time.monotonic() < deadline, logs()
            assert children.running(), logs()
            await asyncio.sleep(1.0)

        # -- the load ------------------------------------------------------------------------------
        operator = Operator(client, rng)
        begin = time.monotonic()
        memory: list[tuple[float, int]] = []
        cpu: list[tuple[float, float, float]] = []  # (at, server, children): for the report

        async def create_rollout(rollout_id: str) -> None:
            await client.json(
                "POST",
                "/rollouts",
                want=201,
                json={
                    "strategy": STRATEGY.format(id=rollout_id),
                    "archive": base64.b64encode(archive()).decode("ascii"),
                    "target": ROLLOUTS[rollout_id],
                    "name": rollout_id,
                    "policy": {"type": "global_incremental", "quorum": 1.0},
                },
            )

        async def sample_memory(until: asyncio.Event) -> None:
            while not until.is_set():
                at = time.monotonic() - begin
                memory.append((at, rss_kib(serve.popen.pid)))
                cpu.append((at, cpu_seconds(serve.popen.pid), cpu_seconds(children.popen.pid)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(until.wait(), 2.0)

        async def create_releases() -> None:
            racing = []
            for i in range(RELEASES):
                release_id = await operator.create(i)
                if i % 3 == 1:
                    racing.append(asyncio.create_task(operator.soon_after_creation(release_id)))
                await asyncio.sleep(CREATE_EVERY)
            await asyncio.gather(*racing)

        async def operate() -> None:
            while time.monotonic() - begin < OPERATE_FOR:
                await asyncio.sleep(rng.uniform(0.3, 0.9))
                await operator.refresh()
                await operator.random_action()

        done_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_memory(done_sampling))
        await create_rollout("soak-west")
        creating = asyncio.create_task(create_releases())
        operating = asyncio.create_task(operate())
        await asyncio.sleep(25.0)
        await create_rollout("soak-all")
        await asyncio.gather(creating, operating)

        # -- finish what is left: publish or cancel staged releases, wait for the rest ---------
        deadline = begin + RELEASES_BY
        while True:
            await operator.refresh()
            unfinished = operator.unfinished()
            if not unfinished or time.monotonic() > deadline:
                break  # (the checks below say what is not finished)
            for release_id in unfinished:
                if operator.states[release_id] == "staged":
                    await operator.act(release_id, "publish" if rng.random() < 0.7 else "cancel")
            await asyncio.sleep(1.0)

        # -- the rollouts end ------------------------------------------------------------------
        deadline = begin + ROLLOUTS_BY
        while True:
            rollouts = {r["id"]: r for r in await client.every("/rollouts")}
            if all(rollouts[r]["state"] != "active" for r in ROLLOUTS):
                break
            if time.monotonic() > deadline:
                break  # (the checks below say what is missing)
            await asyncio.sleep(2.0)
        assert children.running(), logs()
        assert serve.running(), logs()
        done_sampling.set()
        await sampler
        memory.append((time.monotonic() - begin, rss_kib(serve.popen.pid)))

        # -- the children stop (what they sent is in the manager's records), the records -------
        await stop_children()
        assert children.popen.returncode == 0, logs()
        releases = {r["id"]: r for r in await client.every("/releases")}
        tasks = {rid: await client.every(f"/releases/{rid}/tasks") for rid in operator.releases}
        events = {rid: await client.every("/events", release_id=rid) for rid in operator.releases}
        rows = {rid: await client.every(f"/rollouts/{rid}/children") for rid in ROLLOUTS}
        status = {rid: await client.json("GET", f"/rollouts/{rid}/status") for rid in ROLLOUTS}
        registered = await client.every("/children")
    finally:
        await stop_children()
        await client.http.aclose()
    assert services.stop() in (0, -signal.SIGTERM), logs()  # (uvicorn re-raises SIGTERM)
    assert serve.stop() == 0, logs()

    summary = json.loads((tmp_path / "children.json").read_text())
    service_stats = json.loads((tmp_path / "services.json").read_text())
    server_log = serve.stderr()
    report = {
        "operator statuses": dict(client.statuses),
        "children statuses": summary["statuses"],
        "children errors": summary["errors"],
        "children error samples": summary["error_samples"][:5],
        "faults": service_stats["faults"],
        "callbacks": service_stats["callbacks"],
        "final states": collections.Counter(r["state"] for r in releases.values()),
        "actions": collections.Counter(
            (a.kind, a.status, a.code) for a in operator.actions
        ).most_common(),
        "memory (s, KiB)": memory[:: max(1, len(memory) // 12)] + memory[-1:],
        "cpu (s, server s, children s)": cpu[:: max(1, len(cpu) // 12)] + cpu[-1:],
        "rollouts": {rid: (s["rollout"]["state"], s["statuses"]) for rid, s in status.items()},
        "children's rollouts (first fetched, last fetched, last ended; s since they began)": {
            rid: spans(summary["children"], rid) for rid in ROLLOUTS
        },
    }
    print(json.dumps(report, indent=1, default=str))
    records = {"releases": releases, "tasks": tasks, "events": events, "rollout_children": rows}
    records["actions"] = [attrs.asdict(a) for a in operator.actions]
    (tmp_path / "records.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    problems: list[str] = []

    # -- no 5xx, no unanswered request, no error in the server's log ---------------------------
    if client.server_errors or client.failures:
        problems.append(f"operator: 5xx {client.server_errors}, failures {client.failures}")
    if summary["server_error_count"]:
        problems.append(
            f"children: {summary['server_error_count']} 5xx: {summary['server_errors']}"
        )
    if service_stats["callback_5xx"]:
        problems.append(f"callbacks: 5xx {service_stats['callback_5xx']}")
    access_5xx = [line for line in server_log.splitlines() if ACCESS_5XX.search(line)]
    if access_5xx:
        problems.append(f"the server's access log has {len(access_5xx)} 5xx: {access_5xx[:10]}")
    bad_lines = [
        line for line in server_log.splitlines() if "Traceback" in line or " ERROR " in line
    ]
    if bad_lines:
        kinds = collections.Counter(line.split(" ", 2)[-1][:200] for line in bad_lines)
        problems.append(
            f"the server's log has {len(bad_lines)} error lines: {kinds.most_common(8)}"
        )
    concurrent = [a for a in operator.actions if a.code == "concurrent_update"]
    if concurrent:
        problems.append(
            f"{len(concurrent)} operator action(s) refused with 409 concurrent_update: "
            + "; ".join(f"{a.kind} {a.release_id}: {a.why}" for a in concurrent[:5])
        )

    # -- every release: final state, accepted actions, event log ---------------------------------
    assert set(releases) >= set(operator.releases)
    for rid in operator.releases:
        problems += check_release(
            releases[rid],
            tasks[rid],
            events[rid],
            [a for a in operator.actions if a.release_id == rid],
        )
    versions = [r["version"] for r in releases.values()]
    if len(set(versions)) != len(versions):
        problems.append(f"two releases hold the same version: {sorted(versions)}")

    # -- the rollouts: the children's outcomes are the manager's --------------------------------
    by_kind: dict[str, list[str]] = collections.defaultdict(list)
    if len(registered) != CHILDREN or any(c["lost"] for c in registered):
        lost = [c["id"] for c in registered if c["lost"]]
        problems.append(f"{len(registered)} children registered, lost: {lost[:20]}")
    for rid, items in rows.items():
        state = status[rid]["rollout"]["state"]
        if state != "completed":
            problems.append(f"rollout {rid} is {state}: {status[rid]['statuses']}")
        if status[rid]["lost"]:
            problems.append(f"rollout {rid} lost children: {status[rid]['lost'][:20]}")
        by_child = {
            row["child_id"]: {
                "status": row["status"],
                "outcome": row["outcome"],
                "lost": row["lost"],
                "stages": {name: stage["status"] for name, stage in row["stages"].items()},
            }
            for row in items
        }
        for index in range(CHILDREN):
            leaf_id = f"leaf-{index:03d}"
            leaf = summary["children"][leaf_id]
            mine = leaf["outcomes"].get(rid)
            row = by_child.get(leaf_id)
            if not in_target(rid, index):
                if row is not None or mine is not None:
                    by_kind[f"{rid}: outside the target, yet offered"].append(
                        f"{leaf_id} {row} {mine}"
                    )
                continue
            if mine is None:
                by_kind[f"{rid}: a targeted child did not finish it"].append(
                    f"{leaf_id} at {leaf['current']!r} {leaf['stage']!r} (since "
                    f"{leaf['current_started']}s), waiting {leaf['waiting']}; the manager: {row}"
                )
                continue
            want = ("Done", "rolled_out") if mine["outcome"] == "rolled_out" else ("Failed",)
            if row is None or (row["status"], row["outcome"])[: len(want)] != want:
                by_kind[f"{rid}: a child's outcome is not the manager's"].append(
                    f"{leaf_id} ended {mine}, the manager says {row}"
                )
            elif mine["outcome"] == "rolled_back" and row["outcome"] != "rolled_back":
                by_kind[f"{rid}: a child's outcome is not the manager's"].append(
                    f"{leaf_id} rolled back, the manager says {row}"
                )
            expected = "rolled_back" if leaf["failing"] else "rolled_out"
            if mine["outcome"] != expected:
                by_kind[f"{rid}: a child ended otherwise than its health says"].append(
                    f"{leaf_id} (failing: {leaf['failing']}) ended {mine}"
                )

    for kind, examples in by_kind.items():
        problems.append(f"{kind}: {len(examples)} children, e.g. " + " | ".join(examples[:3]))

    # -- memory after the warm-up and at the end --------------------------------------------------
    warm = next((kib for at, kib in memory if at >= WARM_UP), None)
    assert warm is not None, memory
    end = memory[-1][1]
    if abs(end - warm) > MEMORY_BOUND * warm:
        problems.append(f"VmRSS {warm} KiB after the warm-up, {end} KiB at the end: {memory}")

    assert not problems, "\n".join(problems[:60]) + f"\n({len(problems)} problems)"
