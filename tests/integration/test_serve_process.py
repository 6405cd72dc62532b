"""``release-coordinator serve`` as a real process on 127.0.0.1: tokens from the environment,
one access-log line per request, SIGTERM, a restart over the same SQLite file, and a tree of
two servers (a top ``serve`` and a relay ``serve --parent``) with a leaf below the relay."""

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

HOST = "127.0.0.1"  # never another address
READY_WITHIN = 20.0  # seconds to wait for the server (a limit, not an assertion on time)
STOP_WITHIN = 15.0
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
ACCESS = "release_coordinator.access"
AREA = {
    "type": "Polygon",
    "coordinates": [[[13.3, 52.4], [13.5, 52.4], [13.5, 52.6], [13.3, 52.6], [13.3, 52.4]]],
}


class Server:
    """A ``release-coordinator serve`` process with its stderr in a file."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path, *options: str) -> None:
        self.log = log
        self.out = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "release_coordinator",
                "serve",
                "--host",
                HOST,
                "--port",
                "0",
                *options,
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.out,
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

    def wait_ready(self, client: httpx.Client) -> None:
        """Poll ``GET /status`` until it answers 200."""
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if client.get(f"{self.base}/status").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the server never answered GET /status:\n{self.stderr()}")

    def terminate(self) -> int:
        """SIGTERM, and the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"no exit {STOP_WITHIN:g}s after SIGTERM:\n{self.stderr()}"
            ) from None
        finally:
            self.out.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.out.close()


@pytest.fixture
def env() -> dict[str, str]:
    """The test process's environment without any RC_ variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RC_")}


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


class Counting(httpx.Client):
    """A client that counts the answers it got (each one a request the server logged)."""

    def __init__(self) -> None:
        self.answers = 0
        super().__init__(timeout=5.0, event_hooks={"response": [self._count]})

    def _count(self, response: httpx.Response) -> None:
        self.answers += 1


def access_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if f" {ACCESS}: " in line]


def test_serve_end_to_end_over_sqlite_with_sigterm_and_restart(
    tmp_path: Path, env: dict[str, str], servers: list[Server]
) -> None:
    operator = secrets.token_urlsafe(24)
    env["RC_OPERATOR_TOKENS"] = f"alice={operator}"
    ops = {"Authorization": f"Bearer {operator}"}

    # -- first run: cwd = tmp_path, the default database lands there ----------------------------
    first = Server(tmp_path, env, tmp_path / "first.log", "--child-tokens", "--owner", "rc-1")
    servers.append(first)
    with Counting() as client:
        first.wait_ready(client)
        base = first.base
        assert client.get(f"{base}/releases").status_code == 401
        assert (
            client.get(f"{base}/releases", headers={"Authorization": "Bearer no"}).status_code
            == 401
        )
        assert client.get(f"{base}/releases", headers=ops).status_code == 200
        assert client.get(f"{base}/status?token=query-secret").status_code == 200
        service = client.post(
            f"{base}/task-services",
            json={"name": "portal", "url": f"http://{HOST}:9/portal", "check": False},
            headers=ops,
        )
        assert service.status_code == 201, service.text
        created = client.post(f"{base}/releases", json={"name": "nightly"}, headers=ops)
        assert created.status_code == 201, created.text
        release_id = created.json()["id"]
        assert created.json()["author"] == "alice"
        # the child protocol: a first poll registers the child and issues its token
        poll = client.post(
            f"{base}/poll", json={"id": "", "geographic_area": AREA, "number_of_children": 0}
        )
        assert poll.status_code == 200, poll.text
        child_id, child_token = poll.json()["id"], poll.json()["token"]
        again = {"id": child_id, "geographic_area": AREA, "number_of_children": 0}
        assert client.post(f"{base}/poll", json=again).status_code == 401
        answer = client.post(
            f"{base}/poll", json=again, headers={"Authorization": f"Bearer {child_token}"}
        )
        assert answer.status_code == 200
        assert answer.json() == {"id": child_id, "new_release": "", "next_poll": 30}
        assert client.get(f"{base}/rollouts", headers=ops).json()["items"] == []
        answers = client.answers
    assert first.terminate() == 0
    stderr = first.stderr()
    lines = access_lines(stderr)
    assert len(lines) == answers, stderr  # exactly one line per request
    assert any('"GET /releases" 401 ' in line for line in lines)
    assert any('"POST /poll" 200 ' in line for line in lines)
    assert any('"GET /status" 200 ' in line for line in lines)
    for secret in (operator, child_token, "query-secret"):
        assert secret not in stderr
    assert (tmp_path / "release-coordinator.db").is_file()

    # -- second run over the same file: what was registered is still there -----------------------
    second = Server(tmp_path, env, tmp_path / "second.log", "--child-tokens", "--owner", "rc-1")
    servers.append(second)
    with Counting() as client:
        second.wait_ready(client)
        base = second.base
        services = client.get(f"{base}/task-services", headers=ops).json()["items"]
        assert [s["name"] for s in services] == ["portal"]
        release = client.get(f"{base}/releases/{release_id}", headers=ops)
        assert release.status_code == 200
        assert release.json()["name"] == "nightly"
        # rollouts and children are kept in the database
        children = client.get(f"{base}/children", headers=ops).json()["items"]
        assert [(c["id"], c["has_token"]) for c in children] == [(child_id, True)]
        # the child's token too: nobody else can claim its id after the restart
        assert client.post(f"{base}/poll", json=again).status_code == 401
        answer = client.post(
            f"{base}/poll", json=again, headers={"Authorization": f"Bearer {child_token}"}
        )
        # (no new token)
        assert answer.json() == {"id": child_id, "new_release": "", "next_poll": 30}
        answers = client.answers
    assert second.terminate() == 0
    assert len(access_lines(second.stderr())) == answers
    assert operator not in second.stderr()


def test_serve_refuses_to_start_without_an_operator_token(
    tmp_path: Path, env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "release_coordinator", "serve", "--host", HOST, "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "RC_OPERATOR_TOKENS" in done.stderr
    assert "--allow-anonymous" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_in_memory_without_tokens_when_allowed(
    tmp_path: Path, env: dict[str, str], servers: list[Server]
) -> None:
    server = Server(tmp_path, env, tmp_path / "memory.log", "--db", "memory", "--allow-anonymous")
    servers.append(server)
    with Counting() as client:
        server.wait_ready(client)
        assert client.get(f"{server.base}/releases").status_code == 200
        assert client.get(f"{server.base}/rollouts").status_code == 200
    assert server.terminate() == 0
    assert "without operator tokens" in server.stderr()
    assert not (tmp_path / "release-coordinator.db").exists()


# -- relay mode: a tree of two servers -------------------------------------------------------------

HERE = Path(__file__).resolve().parent
ROLLOUT_WITHIN = 60.0  # a limit for waiting, never an assertion on time
ROLLOUT_ID = "relay-rollout-1"
T = TypeVar("T")


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


REGION = square(10, 40, 10)  # the relay's own area (--area)
LEAF_AREA = square(12, 42, 1)  # the leaf's, inside it
STRATEGY = f"""\
id: "{ROLLOUT_ID}"
name: through-a-relay
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
    metrics_conditions: [{{name: errorRate, threshold: "<=0.05"}}]
    end_conditions: [{{name: minCalls, threshold: "40"}}]
    end_action: {{onSuccess: ab, onFailure: rollback}}
  - name: ab
    type: A/B
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 50}}
      - {{name: new_version, trafficPercentage: 50}}
    metrics_conditions: [{{name: errorRate, threshold: "<=0.05"}}]
    end_conditions: [{{name: minCalls, threshold: "100"}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for version in ("v1", "v2"):
            info = zipfile.ZipInfo(f"fns/checkout_{version}/fn.py", date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, f"def handler(request):\n    return {version!r}\n")
    return buffer.getvalue()


class NotYet(Exception):
    """Raised by a :func:`wait_for` check: not yet, and what it saw."""


def wait_for(what: str, check: Callable[[], T], logs: Callable[[], str]) -> T:
    """``check()``'s first answer that raises neither :class:`NotYet` nor a connection error,
    polled until :data:`ROLLOUT_WITHIN`; fails with every log when the deadline passes."""
    deadline = time.monotonic() + ROLLOUT_WITHIN
    last: object = None
    while time.monotonic() < deadline:
        try:
            return check()
        except (httpx.TransportError, NotYet) as error:
            last = error
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {ROLLOUT_WITHIN:g}s (last seen: {last!r})\n{logs()}")


def test_a_relay_serve_passes_a_rollout_from_the_top_to_its_leaf(
    tmp_path: Path, env: dict[str, str], servers: list[Server]
) -> None:
    operator = secrets.token_urlsafe(24)
    parent_token = secrets.token_urlsafe(24)
    ops = {"Authorization": f"Bearer {operator}"}
    env["RC_OPERATOR_TOKENS"] = f"ops={operator}"
    env["PYTHONUNBUFFERED"] = "1"
    fast = ["--tick-interval", "0.2", "--lost-after", "600"]  # never lost while the test runs
    # the top issues child tokens: the relay gets one at its first poll and sends it from then on
    top = Server(tmp_path, env, tmp_path / "top.log", "--db", "memory", "--child-tokens", *fast)
    servers.append(top)
    (tmp_path / "region.geojson").write_text(json.dumps(REGION))
    relay = Server(
        tmp_path,
        {**env, "RC_PARENT_TOKEN": parent_token},  # sent until the top issues the relay one
        tmp_path / "relay.log",
        "--db",
        f"sqlite:///{tmp_path / 'relay.db'}",
        "--parent",
        top.base,
        "--relay-id",
        "relay-1",
        "--area",
        "region.geojson",
        *fast,
    )
    servers.append(relay)
    leaf_out = (tmp_path / "leaf.out").open("wb")
    leaf_err = (tmp_path / "leaf.err").open("wb")
    leaf = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "_e2e_leaf.py"),
            "--parent",
            relay.base,
            "--leaf-id",
            "leaf-1",
            "--area",
            json.dumps(LEAF_AREA),
            "--deadline",
            str(ROLLOUT_WITHIN),
        ],
        env=env,
        stdout=leaf_out,
        stderr=leaf_err,
    )

    def logs() -> str:
        parts = [f"-- top\n{top.stderr()[-4000:]}", f"-- relay\n{relay.stderr()[-4000:]}"]
        for name in ("leaf.out", "leaf.err"):
            parts.append(f"-- {name}\n{(tmp_path / name).read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    try:
        with httpx.Client(timeout=10.0) as client:
            top.wait_ready(client)
            relay.wait_ready(client)

            def registered() -> dict[str, Any]:
                children = client.get(f"{top.base}/children", headers=ops).json()["items"]
                below = client.get(f"{relay.base}/children", headers=ops).json()["items"]
                seen = [(c["id"], c["number_of_children"]) for c in children]
                if seen != [("relay-1", 1)] or [c["id"] for c in below] != ["leaf-1"]:
                    raise NotYet({"top": seen, "relay": [c["id"] for c in below]})
                return dict(children[0])

            child = wait_for("the leaf and the relay registered", registered, logs)
            assert child["has_token"] is True, child  # the top issued the relay its token
            assert child["area"] == REGION, child  # the relay's own area, not its leaf's

            created = client.post(
                f"{top.base}/rollouts",
                json={
                    "strategy": STRATEGY,
                    "archive": base64.b64encode(archive()).decode("ascii"),
                    "target": square(0, 30, 30),
                    "name": "through a relay",
                },
                headers=ops,
            )
            assert created.status_code == 201, f"{created.text}\n{logs()}"

            try:
                leaf.wait(timeout=ROLLOUT_WITHIN + 10)
            except subprocess.TimeoutExpired:
                leaf.kill()
                raise AssertionError(f"the leaf never finished\n{logs()}") from None
            assert leaf.returncode == 0, logs()
            report = json.loads((tmp_path / "leaf.out").read_text().strip().splitlines()[-1])
            assert report["release_id"] == ROLLOUT_ID, report
            assert (report["outcome"], report["stages"]) == ("rolled_out", ["canary", "ab"]), (
                f"{report}\n{logs()}"
            )

            def settled_at_the_top() -> dict[str, Any]:
                url = f"{top.base}/rollouts/{ROLLOUT_ID}/children"
                rows = client.get(url, headers=ops).json()["items"]
                if [(r["child_id"], r["status"]) for r in rows] != [("relay-1", "Done")]:
                    raise NotYet(rows)
                return dict(rows[0])

            row = wait_for("the top counted the relay done", settled_at_the_top, logs)
            assert row["outcome"] == "rolled_out", row
            assert {name: s["status"] for name, s in row["stages"].items()} == {
                "canary": "Completed",
                "ab": "Completed",
            }, row
            # the relay's own view: an adopted, gated rollout over its one leaf
            local = client.get(f"{relay.base}/rollouts/{ROLLOUT_ID}", headers=ops).json()
            assert local["gated"] is True, local
            below = client.get(f"{relay.base}/rollouts/{ROLLOUT_ID}/children", headers=ops)
            assert [(r["child_id"], r["status"], r["outcome"]) for r in below.json()["items"]] == [
                ("leaf-1", "Done", "rolled_out")
            ], below.text
    finally:
        if leaf.poll() is None:
            leaf.kill()
            leaf.wait(timeout=10)
        leaf_out.close()
        leaf_err.close()
    assert relay.terminate() == 0, logs()
    assert top.terminate() == 0, logs()
    assert "relay under http://127.0.0.1:" in relay.stderr()
    for server in (top, relay):
        assert "Traceback" not in server.stderr(), logs()
        assert operator not in server.stderr()
        assert parent_token not in server.stderr()
