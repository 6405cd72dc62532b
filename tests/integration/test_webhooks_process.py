"""Webhooks end to end with real processes on 127.0.0.1: ``serve`` over SQLite delivers to a
receiver process that fails, then is gone (connections refused) while ``serve`` restarts, and
comes back: every event reaches it once acknowledged, in order, signed, none lost."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve_process import Server, env, servers  # noqa: F401 - fixtures

from process_support import HOST, free_port, stop

pytestmark = pytest.mark.slow

RECEIVER = Path(__file__).with_name("_webhook_receiver.py")
WITHIN = 60.0  # seconds to wait for deliveries (a limit, not an assertion on time)


@pytest.fixture
def receivers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


def start_receiver(
    port: int, record: Path, fail_first: int, secret: str, environ: dict[str, str]
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port), str(record), str(fail_first)],
        env={**environ, "RC_TEST_SECRET": secret},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until it listens
        try:
            httpx.get(f"http://{HOST}:{port}/", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    stop(process)
    raise AssertionError("the receiver did not start")


def attempts(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line]


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {WITHIN:g} s: {what}")


def test_deliveries_survive_failures_a_gone_receiver_and_a_restart_of_serve(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811 - the fixture
    servers: list[Server],  # noqa: F811 - the fixture
    receivers: list[subprocess.Popen[bytes]],
) -> None:
    operator = secrets.token_urlsafe(24)
    env["RC_OPERATOR_TOKENS"] = f"root={operator}"
    ops = {"Authorization": f"Bearer {operator}"}
    options = ("--webhook-interval", "0.2", "--poll-interval", "0.2")
    port = free_port()
    record = tmp_path / "received.jsonl"

    first = Server(tmp_path, env, tmp_path / "first.log", *options)
    servers.append(first)
    with httpx.Client(timeout=5.0, headers=ops) as client:
        first.wait_ready(client)
        made = client.post(
            f"{first.base}/webhooks",
            json={"url": f"http://{HOST}:{port}/hook", "max_batch": 3, "description": "ops"},
        )
        assert made.status_code == 201, made.text
        webhook_id, secret = made.json()["id"], made.json()["secret"]
        start = made.json()["cursor"]  # the events from now on
        service = {"name": "portal", "url": f"http://{HOST}:9/portal", "check": False}
        assert client.post(f"{first.base}/task-services", json=service).status_code == 201
        receivers.append(start_receiver(port, record, 2, secret, env))
        assert client.post(f"{first.base}/releases", json={"name": "r1"}).status_code == 201
        # two failures (500), then the receiver is gone: connections refused
        wait_for(lambda: len(attempts(record)) >= 2, "two failed deliveries")
        stop(receivers.pop())
        assert client.post(f"{first.base}/releases", json={"name": "r2"}).status_code == 201
    assert first.terminate() == 0

    second = Server(tmp_path, env, tmp_path / "second.log", *options)
    servers.append(second)
    with httpx.Client(timeout=5.0, headers=ops) as client:
        second.wait_ready(client)
        assert client.post(f"{second.base}/releases", json={"name": "r3"}).status_code == 201

        def refused() -> bool:
            log = client.get(f"{second.base}/webhooks/{webhook_id}/deliveries").json()
            return any("connect" in d["error"] for d in log["items"])

        wait_for(refused, "a delivery to the gone receiver")
        receivers.append(start_receiver(port, record, 0, secret, env))

        def caught_up() -> bool:
            webhook = client.get(f"{second.base}/webhooks/{webhook_id}").json()
            last = client.get(f"{second.base}/events", params={"limit": 1000}).json()
            return bool(last["items"]) and webhook["cursor"] == last["items"][-1]["id"]

        wait_for(caught_up, "the webhook's cursor at the newest event")
        events = client.get(f"{second.base}/events", params={"limit": 1000}).json()["items"]
        webhook = client.get(f"{second.base}/webhooks/{webhook_id}").json()
        log = client.get(f"{second.base}/webhooks/{webhook_id}/deliveries").json()["items"]

    tried = attempts(record)
    assert all(a["status"] != 401 for a in tried), tried  # every signature verified
    assert [a["status"] for a in tried[:2]] == [500, 500]
    assert tried[0]["id"] == tried[1]["id"] == tried[2]["id"]  # a retry: the same message
    acknowledged = [i for a in tried if a["status"] == 200 for i in a["events"]]
    assert acknowledged == [e["id"] for e in events if e["id"] > start]  # once, in order
    assert all(len(a["events"]) <= 3 for a in tried)
    assert len({e["release_id"] for e in events if e["release_id"]}) == 3
    assert webhook["enabled"] is True
    assert webhook["failures"] == 0
    failed = [d for d in log if not d["ok"]]
    assert any(d["status_code"] == 500 for d in failed), log
    assert any(d["status_code"] is None and "connect" in d["error"] for d in failed), log
    assert secret not in second.stderr()
    assert secret not in first.stderr()
