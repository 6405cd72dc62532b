"""``GET /metrics`` (server.metrics) and the JSON log format (server.access_log): a release and
a rollout driven through the in-memory adapters behind ``service_app``, the text exposition
parsed with prometheus-client's parser before and after; who may scrape; JSON log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from release_coordinator import (
    Area,
    Coordinator,
    CoordinatorConfig,
    Fault,
    MemoryRolloutStore,
    MemoryStore,
    MemoryTransport,
    RetryPolicy,
    RolloutManager,
    TaskServiceKit,
)
from release_coordinator.server.access_log import ACCESS_LOGGER, JsonFormatter
from release_coordinator.server.metrics import MeteredTransport
from release_coordinator.server.serve import service_app

from .test_rollout_manager import bundle, result

pytestmark = pytest.mark.anyio

OPERATOR_TOKEN = "metrics-op-token-0123456789"
PORTAL_TOKEN = "metrics-portal-token-0123456789"
OPS = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
AREA = {"type": "Polygon", "coordinates": [[[5, 45], [6, 45], [6, 46], [5, 46], [5, 45]]]}
SERVICES = ("portal", "search")
WAIT = 10.0  # seconds to wait for a release (a limit, never an assertion on time)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Served:
    """A coordinator over two in-memory task services and a manager, behind service_app."""

    def __init__(self, **options: Any) -> None:
        self.transport = MemoryTransport()
        for name in SERVICES:
            self.transport.add(f"memory://{name}", TaskServiceKit(name))
        config = CoordinatorConfig(poll_interval=0.01, retry=RetryPolicy(base_delay=0.0))
        self.coordinator = Coordinator(MemoryStore(), self.transport, config=config)
        self.manager = RolloutManager(MemoryRolloutStore())
        options.setdefault("operator_tokens", {"alice": OPERATOR_TOKEN})
        options.setdefault("callback_tokens", {"portal": PORTAL_TOKEN})
        self.app = service_app(self.coordinator, self.manager, **options)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://rc.test"
        )

    async def scrape(self) -> Samples:
        answer = await self.client.get("/metrics", headers=OPS)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain; version=")
        return parse(answer.text)


def parse(text: str) -> Samples:
    """Every sample of the exposition, by name and labels (the parser refuses a bad text)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not (yet) exposed."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    node = Served()
    async with node.app.router.lifespan_context(node.app):
        yield node
    await node.client.aclose()


async def test_the_metrics_move_as_a_release_and_a_rollout_run(served: Served) -> None:
    before = await served.scrape()
    assert value(before, "rc_metrics_stores_read") == 1
    assert value(before, "rc_releases", state="staged") == 0
    assert total(before, "rc_task_service_request_duration_seconds_count") == 0
    assert isinstance(served.coordinator.transport, MeteredTransport)

    for name in SERVICES:
        answer = await served.client.post(
            "/task-services", json={"name": name, "url": f"memory://{name}"}, headers=OPS
        )
        assert answer.status_code == 201
    # The portal refuses the first initialize: the coordinator retries it once.
    served.transport.inject("memory://portal", Fault.refuse(), action="initialize")
    created = await served.client.post("/releases", json={"name": "nightly"}, headers=OPS)
    release_id = created.json()["id"]
    await served.coordinator.wait(release_id, ["staged"], timeout=WAIT)
    assert (await served.client.get(f"/releases/{release_id}", headers=OPS)).status_code == 200

    staged = await served.scrape()
    assert value(staged, "rc_releases", state="staged") == 1
    assert value(staged, "rc_releases", state="published") == 0
    assert value(staged, "rc_tasks", state="staged") == 2
    call = "rc_task_service_request_duration_seconds_count"
    for name in SERVICES:
        assert value(staged, call, service=name, action="status", outcome="ok") == 1  # registered
        assert value(staged, call, service=name, action="initialize", outcome="ok") == 1
        assert value(staged, call, service=name, action="start", outcome="ok") == 1
        health = "rc_task_service_health"
        assert total(staged, health, service=name, status="ok") == 1
        assert total(staged, health, service=name, status="down") == 0
    assert value(staged, call, service="portal", action="initialize", outcome="unreachable") == 1
    assert value(staged, call, service="search", action="initialize", outcome="unreachable") == 0
    retries = "rc_task_service_retries_total"
    assert value(staged, retries, service="portal", action="initialize") == 1
    assert value(staged, retries, service="search", action="initialize") == 0
    requests = "rc_http_requests_total"
    assert value(staged, requests, method="POST", route="/releases", status="201") == 1
    assert value(staged, requests, method="POST", route="/task-services", status="201") == 2
    # the route template, never the path with its id
    assert value(staged, requests, method="GET", route="/releases/{release_id}", status="200") == 1
    assert not any(release_id in str(labels) for _, labels in staged)
    assert value(staged, requests, method="GET", route="/metrics", status="200") == 1  # before

    await served.client.post(f"/releases/{release_id}/publish", headers=OPS)
    await served.coordinator.wait(release_id, timeout=WAIT)
    published = await served.scrape()
    assert value(published, "rc_releases", state="published") == 1
    assert value(published, "rc_releases", state="staged") == 0
    assert total(published, "rc_tasks") == 0  # only unfinished releases' tasks are counted
    assert total(published, call, action="publish", outcome="ok") == 2

    # A rollout over two children: polls, a fetch, a result waiting on the barrier.
    await served.manager.create_rollout(bundle(), Area.from_geojson(AREA))
    children = []
    for _ in range(2):
        poll = await served.client.post("/poll", json={"id": "", "geographic_area": AREA})
        assert poll.json()["new_release"] == "42"
        children.append(poll.json()["id"])
    for child in children:
        fetched = await served.client.get("/release", params={"childID": child, "releaseID": "42"})
        assert fetched.status_code == 200
    waiting = await served.client.post("/result", json=result(children[0], "canary-10", 2))
    assert waiting.status_code == 200
    bad = await served.client.post("/result", json=result("nobody", "canary-10", 2))
    assert bad.status_code == 404

    rolling = await served.scrape()
    assert value(rolling, requests, method="POST", route="/poll", status="200") == 2
    assert value(rolling, requests, method="POST", route="/result", status="200") == 1
    assert value(rolling, requests, method="POST", route="/result", status="404") == 1
    assert value(rolling, requests, method="GET", route="/release", status="200") == 2
    assert value(rolling, "rc_rollouts", state="active") == 1
    assert value(rolling, "rc_rollout_children", rollout="42", status="Doing") == 2
    assert value(rolling, "rc_rollout_children", rollout="42", status="Done") == 0
    stage = "rc_rollout_stage_children"
    assert value(rolling, stage, rollout="42", stage="canary-10", status="SuccessWaiting") == 1
    assert value(rolling, stage, rollout="42", stage="canary-10", status="InProgress") == 1
    assert value(rolling, stage, rollout="42", stage="ab-50", status="Pending") == 2
    barrier = {"rollout": "42", "stage": "canary-10"}
    assert value(rolling, "rc_barrier_waiting_children", **barrier) == 1
    assert value(rolling, "rc_barrier_taking_part_children", **barrier) == 2
    assert value(rolling, "rc_barrier_open", **barrier) == 0
    assert (
        "rc_barrier_waiting_children",
        frozenset({("rollout", "42"), ("stage", "ab-50")}),
    ) not in rolling

    await served.manager.abort("42")
    aborted = await served.scrape()
    assert value(aborted, "rc_rollouts", state="aborted") == 1
    assert total(aborted, "rc_rollout_children") == 0  # ended rollouts are not listed


async def test_who_may_scrape() -> None:
    node = Served()
    async with node.app.router.lifespan_context(node.app):
        refused = await node.client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer not-the-token-0123456789"}
        assert (await node.client.get("/metrics", headers=wrong)).status_code == 401
        callback = {"Authorization": f"Bearer {PORTAL_TOKEN}"}
        assert (await node.client.get("/metrics", headers=callback)).status_code == 401
        answer = await node.client.get("/metrics", headers=OPS)
        assert answer.status_code == 200
        assert OPERATOR_TOKEN not in answer.text
        assert PORTAL_TOKEN not in answer.text
        assert "not-the-token" not in answer.text
        samples = parse(answer.text)
        assert (
            value(samples, "rc_http_requests_total", method="GET", route="/metrics", status="401")
            == 3
        )
    await node.client.aclose()
    for options in ({"metrics_public": True}, {"operator_tokens": (), "allow_anonymous": True}):
        open_node = Served(**options)
        assert (await open_node.client.get("/metrics")).status_code == 200, options
        await open_node.client.aclose()


async def test_each_app_has_its_own_registry() -> None:
    first, second = Served(), Served()
    await first.client.get("/status")
    await first.client.get("/status")
    await second.client.get("/status")
    route = {"method": "GET", "route": "/status", "status": "200"}
    assert value(await first.scrape(), "rc_http_requests_total", **route) == 2
    assert value(await second.scrape(), "rc_http_requests_total", **route) == 1
    for node in (first, second):
        await node.client.aclose()


class JsonLines(logging.Handler):
    """Formats each record as JsonFormatter does, and keeps the lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_json_log_lines_have_the_fields_and_no_secret(served: Served) -> None:
    handler = JsonLines()
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        given = await served.client.get("/status", headers={"X-Request-ID": "abc-123.trace"})
        insane = await served.client.get("/status", headers={"X-Request-ID": 'a b"\\'})
        created = await served.client.post(
            "/releases?token=query-secret", json={"name": "n"}, headers=OPS
        )
        release_id = created.json()["id"]
        await served.client.get(f"/releases/{release_id}", headers=OPS)
        await served.client.get("/nowhere/at/all")
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert given.headers["x-request-id"] == "abc-123.trace"
    generated = insane.headers["x-request-id"]
    assert generated != 'a b"\\'
    assert len(generated) == 32
    entries = [json.loads(line) for line in handler.lines]
    assert len(entries) == 5
    for entry, line in zip(entries, handler.lines, strict=True):
        assert "\n" not in line
        assert {"time", "level", "logger", "message", "request_id", "method", "route"} <= set(entry)
        assert {"status", "duration_ms", "client"} <= set(entry)
        assert entry["level"] == "INFO"
        assert entry["logger"] == ACCESS_LOGGER
        assert entry["time"].endswith("Z")
        assert isinstance(entry["duration_ms"], float)
        assert entry["duration_ms"] >= 0
        assert OPERATOR_TOKEN not in line
        assert "query-secret" not in line
    assert [e["request_id"] for e in entries[:2]] == ["abc-123.trace", generated]
    assert [(e["method"], e["route"], e["status"]) for e in entries] == [
        ("GET", "/status", 200),
        ("GET", "/status", 200),
        ("POST", "/releases", 201),
        ("GET", "/releases/{release_id}", 200),
        ("GET", "unmatched", 404),
    ]
    assert entries[3]["message"] == "GET /releases/{release_id} 200"
    assert release_id not in handler.lines[3]


def test_json_formatter_keeps_other_records_and_their_exceptions() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("release_coordinator.test_metrics")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("listening on %s", "http://127.0.0.1:1")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "listening on http://127.0.0.1:1"
    assert first["level"] == "WARNING"
    assert "route" not in first
    assert "exception" not in first
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"]


def test_the_http_tally_counts_each_duration_in_its_bucket() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from release_coordinator.server.metrics import HTTP_BUCKETS, HttpTally

    tally = HttpTally()
    registry = CollectorRegistry()
    registry.register(tally)
    for seconds in (HTTP_BUCKETS[0], HTTP_BUCKETS[0] * 1.1, 99.0):  # on a bound, past it, past all
        tally.add("POST", "/poll", "200", seconds)
    text = generate_latest(registry).decode()
    labels = 'method="POST",route="/poll"'
    assert 'rc_http_requests_total{method="POST",route="/poll",status="200"} 3.0' in text
    assert f'rc_http_request_duration_seconds_bucket{{le="0.001",{labels}}} 1.0' in text
    assert f'rc_http_request_duration_seconds_bucket{{le="0.0025",{labels}}} 2.0' in text
    assert f'rc_http_request_duration_seconds_bucket{{le="10.0",{labels}}} 2.0' in text
    assert f'rc_http_request_duration_seconds_bucket{{le="+Inf",{labels}}} 3.0' in text
    assert f"rc_http_request_duration_seconds_count{{{labels}}} 3.0" in text
