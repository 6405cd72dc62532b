"""``release-coordinator serve`` as a real process on 127.0.0.1: tokens from the environment,
one access-log line per request, SIGTERM, and a restart over the same SQLite file."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from release_coordinator.storage import sql

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
        assert answer.json() == {"id": child_id, "new_release": ""}
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
        if getattr(sql, "SQLRolloutStore", None) is not None:  # rollouts kept in the database
            children = client.get(f"{base}/children", headers=ops).json()["items"]
            assert [(c["id"], c["has_token"]) for c in children] == [(child_id, True)]
            # the child's token too: nobody else can claim its id after the restart
            assert client.post(f"{base}/poll", json=again).status_code == 401
            answer = client.post(
                f"{base}/poll", json=again, headers={"Authorization": f"Bearer {child_token}"}
            )
            assert answer.json() == {"id": child_id, "new_release": ""}  # (no new token)
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
