"""``release-coordinator serve --db memory --allow-anonymous --log-format json`` as a real
process on 127.0.0.1: ``GET /metrics`` scraped over HTTP and parsed with prometheus-client's
parser, and every line of its stderr a JSON object (the access lines with their fields)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve_process import Server

pytestmark = pytest.mark.slow

AREA = {"type": "Polygon", "coordinates": [[[5, 45], [6, 45], [6, 46], [5, 46], [5, 45]]]}


def requests_counted(text: str, route: str) -> float:
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rc_http_requests_total" and sample.labels["route"] == route:
                found += sample.value
    return found


def test_a_json_logging_serve_answers_metrics(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    server = Server(
        tmp_path,
        env,
        tmp_path / "serve.log",
        "--db",
        "memory",
        "--allow-anonymous",
        "--log-format",
        "json",
    )
    try:
        with httpx.Client(timeout=5.0) as client:
            server.wait_ready(client)
            before = client.get(f"{server.base}/metrics")
            assert before.status_code == 200
            assert before.headers["content-type"].startswith("text/plain; version=")
            for _ in range(3):
                poll = client.post(f"{server.base}/poll", json={"id": "", "geographic_area": AREA})
                assert poll.status_code == 200
            traced = client.get(f"{server.base}/releases", headers={"X-Request-ID": "trace-1"})
            assert traced.headers["x-request-id"] == "trace-1"
            after = client.get(f"{server.base}/metrics")
        assert requests_counted(before.text, "/poll") == 0
        assert requests_counted(after.text, "/poll") == 3
        assert requests_counted(after.text, "/metrics") == 1  # the first scrape
        names = {f.name for f in text_string_to_metric_families(after.text)}
        assert {"rc_releases", "rc_tasks", "rc_rollouts", "process_cpu_seconds"} <= names
    finally:
        status = server.terminate()
    assert status == 0
    lines = server.stderr().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("listening on http://127.0.0.1:" in e["message"] for e in entries)
    access = [e for e in entries if e["logger"] == "release_coordinator.access"]
    assert [e["route"] for e in access if e["method"] == "POST"] == ["/poll"] * 3
    (traced_line,) = [e for e in access if e["request_id"] == "trace-1"]
    assert (traced_line["method"], traced_line["route"], traced_line["status"]) == (
        "GET",
        "/releases",
        200,
    )
    assert all(e["client"].startswith("127.0.0.1:") for e in access)
    assert all(isinstance(e["duration_ms"], float) for e in access)
