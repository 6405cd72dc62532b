"""The operator's commands (``release-coordinator services|releases|rollouts``) as processes
against a real ``release-coordinator serve --db memory`` on 127.0.0.1, over three real task
services (``_kit_server.py``): a release registered, created, watched to staged and published
(exit 0), one canceled (watch: exit 1), refusals (exit 1), a wrong or missing token (exit 4),
an unreachable server (exit 3), bad usage (exit 2), ``--json`` that parses, plain tables
without rich; a rollout uploaded from a folder, started, paused, resumed, listed and aborted."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_support import HOST, free_port, stop

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
READY_WITHIN = 20.0  # seconds to wait for a process (a limit, never an assertion on time)
COMMAND_WITHIN = 120.0
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
AREA = {
    "type": "Polygon",
    "coordinates": [[[0.0, 40.0], [20.0, 40.0], [20.0, 60.0], [0.0, 60.0], [0.0, 40.0]]],
}
STRATEGY = """\
id: "{id}"
name: checkout-gradual
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
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RC_")}


def wait_for_status(url: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


class Stack:
    """A serve process over three task services, and the CLI run against it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.token = secrets.token_urlsafe(24)
        self.kit_token = secrets.token_urlsafe(16)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.kits = self._kits()
        self.base = self._serve()

    def _start(self, command: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        out = (self.tmp / log).open("wb")
        self.logs.append(out)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def _kits(self) -> str:
        port = free_port()
        env = {**clean_env(), "RC_TEST_KITS": "3", "RC_TEST_TOKEN": self.kit_token}
        command = [sys.executable, "-m", "uvicorn", "_kit_server:create_app", "--factory"]
        command += ["--app-dir", str(HERE), "--host", HOST, "--port", str(port)]
        self._start([*command, "--log-level", "warning"], env, "kits.log")
        base = f"http://{HOST}:{port}"
        wait_for_status(f"{base}/svc0/status", {"Authorization": f"Bearer {self.kit_token}"})
        return base

    def _serve(self) -> str:
        env = {
            **clean_env(),
            "RC_OPERATOR_TOKENS": f"alice={self.token}",
            "RC_TASK_SERVICE_TOKEN": self.kit_token,
        }
        command = [sys.executable, "-m", "release_coordinator", "serve", "--db", "memory"]
        command += ["--host", HOST, "--port", "0", "--poll-interval", "0.2"]
        self._start([*command, "--tick-interval", "0.2"], env, "serve.log")
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            found = LISTENING.search(self.serve_log())
            if found:
                base = f"http://{HOST}:{found[1]}"
                wait_for_status(f"{base}/status")
                return base
            time.sleep(0.05)
        raise AssertionError(f"serve did not start:\n{self.serve_log()}")

    def serve_log(self) -> str:
        return (self.tmp / "serve.log").read_text(errors="replace")

    def cli(
        self,
        *args: str,
        token: str | None = "",
        url: str | None = None,
        python: tuple[str, ...] = ("-m", "release_coordinator"),
    ) -> subprocess.CompletedProcess[str]:
        """``release-coordinator ARGS`` with RC_URL (this server unless ``url``) and
        RC_TOKEN (the operator's unless ``token``; None: no RC_TOKEN)."""
        env = {**clean_env(), "RC_URL": url or self.base}
        if token is not None:
            env["RC_TOKEN"] = token or self.token
        done = subprocess.run(
            [sys.executable, *python, *args],
            cwd=self.tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_WITHIN,
        )
        assert self.token not in done.stdout + done.stderr  # never printed
        return done

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def close(self) -> None:
        for process in self.processes:
            stop(process)
        for out in self.logs:
            out.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    started = Stack(tmp_path)
    try:
        yield started
    finally:
        started.close()
    assert "Traceback" not in started.serve_log(), started.serve_log()[-4000:]


def refused(done: subprocess.CompletedProcess[str], status: int, says: str) -> None:
    """Exit ``status``, nothing on stdout, one line on stderr that says ``says``."""
    assert done.returncode == status, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert says in lines[0], lines[0]


# -- releases ------------------------------------------------------------------------------------


def test_a_release_from_the_command_line(stack: Stack) -> None:
    ids = {}
    for name in ("svc0", "svc1", "svc2"):
        added = stack.json("services", "add", name, f"{stack.kits}/{name}")
        assert (added["name"], added["enabled"]) == (name, True)
        ids[name] = added["id"]
    table = stack.ok("services", "list")
    assert all(name in table and ids[name] in table for name in ids)
    page = stack.json("services", "list")
    assert sorted(s["name"] for s in page["items"]) == ["svc0", "svc1", "svc2"]
    assert stack.json("services", "check", ids["svc0"])["health"]["status"] == "ok"
    # a fourth one, never reached, to disable, enable and remove
    spare = stack.json("services", "add", "spare", f"http://{HOST}:9/none", "--no-check")
    assert "disabled" in stack.ok("services", "disable", spare["id"])
    assert stack.json("services", "enable", spare["id"])["enabled"] is True
    assert stack.json("services", "disable", spare["id"])["enabled"] is False
    assert "spare" in stack.ok("services", "show", spare["id"])
    assert (
        stack.ok("services", "remove", spare["id"]).strip() == f"removed task service {spare['id']}"
    )
    refused(stack.cli("services", "remove", spare["id"]), 1, "unknown task service")

    # created, watched until staged, published, watched until published
    release = stack.json("releases", "create", "2026-12", "--study", "SD_1", "--tag", "monthly")
    rid = release["id"]
    assert (release["author"], release["tags"]) == ("alice", ["monthly"])
    staged = stack.cli("releases", "watch", rid, "--until-staged", "--interval", "0.2")
    assert staged.returncode == 0, staged.stdout + staged.stderr
    assert f"release {rid} staged" in staged.stdout
    assert re.search(r": publish(ing|ed)$", stack.ok("releases", "publish", rid).strip())
    watched = stack.cli("releases", "watch", rid, "--json", "--interval", "0.2")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    final = json.loads(watched.stdout)
    assert final["release"]["state"] == "published"
    assert sorted(t["state"] for t in final["tasks"]) == ["published"] * 3
    shown = stack.ok("releases", "show", rid)
    assert "published" in shown
    assert all(name in shown for name in ("svc0", "svc1", "svc2"))  # tasks by service name
    listed = stack.json("releases", "list", "--state", "published")
    assert [r["id"] for r in listed["items"]] == [rid]
    assert rid in stack.ok("releases", "list")
    events = stack.json("releases", "events", rid, "--kind", "transition")
    assert events["items"]
    assert {e["kind"] for e in events["items"]} == {"transition"}
    assert "published" in stack.ok("releases", "events", rid)

    # refusals: exit 1, the API's message on stderr
    refused(stack.cli("releases", "cancel", rid), 1, "cannot 'cancel' from state 'published'")
    refused(stack.cli("releases", "show", "RE_NOPE"), 1, "unknown release 'RE_NOPE'")
    refused(stack.cli("releases", "list", "--state", "nonsense"), 1, "state")

    # created and watched in one go, published on its own
    auto = stack.cli(
        "releases", "create", "nightly", "--auto-publish", "--watch", "--interval", "0.2"
    )
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert re.search(r"release RE_\w+ published", auto.stdout), auto.stdout


def test_a_canceled_release_and_one_run_again(stack: Stack) -> None:
    for name in ("svc0", "svc1"):
        stack.ok("services", "add", name, f"{stack.kits}/{name}")
    studies = [arg for i in range(300) for arg in ("--study", f"SD_{i}")]  # staged one by one
    rid = stack.json("releases", "create", "slow", *studies)["id"]
    canceled = stack.json("releases", "cancel", rid, "--reason", "not today")
    assert canceled["state"] in ("canceling", "canceled")
    watched = stack.cli("releases", "watch", rid, "--interval", "0.2")
    assert watched.returncode == 1, watched.stdout + watched.stderr  # it did not publish
    assert f"release {rid} canceled" in watched.stdout
    again = stack.json("releases", "run-again", rid)
    assert again["cloned_from"] == rid
    canceled_again = stack.cli("releases", "cancel", again["id"])
    assert canceled_again.returncode == 0, canceled_again.stderr
    assert again["id"] in canceled_again.stdout
    json_watch = stack.cli("releases", "watch", again["id"], "--json")
    assert json_watch.returncode == 1
    assert json.loads(json_watch.stdout)["release"]["state"] == "canceled"


# -- exit codes ----------------------------------------------------------------------------------


def test_the_exit_codes_of_failures(stack: Stack) -> None:
    # not authenticated: 4
    refused(stack.cli("releases", "list", token="not-the-token"), 4, "token")
    refused(stack.cli("rollouts", "list", token=None), 4, "token")
    # nothing listens there: 3
    nowhere = f"http://{HOST}:{free_port()}"
    refused(stack.cli("services", "list", url=nowhere), 3, f"cannot reach {nowhere}")
    refused(stack.cli("services", "list", "--url", nowhere, "--timeout", "2"), 3, "cannot reach")
    # bad usage: 2
    for args in (
        ("releases",),
        ("releases", "watch"),
        ("releases", "frobnicate"),
        ("services", "list", "--timeout", "soon"),
        ("rollouts", "create", "--name", "x"),  # --target is required
    ):
        done = stack.cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
        assert "usage:" in done.stderr
    refused(stack.cli("services", "list", "--url", "ftp://example.org"), 2, "http(s)://")
    refused(stack.cli("services", "list", "--timeout", "0"), 2, "time-out")
    refused(
        stack.cli("rollouts", "create", "folder", "--target", "missing.geojson"),
        2,
        "--target missing.geojson: cannot read it",
    )
    # refused by the server: 1
    refused(stack.cli("rollouts", "start", "no-such-rollout"), 1, "no-such-rollout")


def test_plain_tables_without_rich(stack: Stack) -> None:
    stack.ok("services", "add", "svc0", f"{stack.kits}/svc0")
    without_rich = (
        "-c",
        "import sys; sys.modules['rich'] = None; from release_coordinator.cli import main; "
        "sys.exit(main(sys.argv[1:]))",
    )
    done = stack.cli("services", "list", python=without_rich)
    assert done.returncode == 0, done.stderr
    header, rule, row = done.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "URL", "ENABLED", "HEALTH"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.split()[1:] == ["svc0", f"{stack.kits}/svc0", "yes", "ok"]
    with_rich = stack.ok("services", "list")
    assert "━" in with_rich  # rich's table, as a check that the other one was not


# -- rollouts ------------------------------------------------------------------------------------


def release_folder(root: Path, rollout_id: str) -> Path:
    for version in ("v1", "v2"):
        (root / "fns" / f"checkout_{version}").mkdir(parents=True)
        (root / "fns" / f"checkout_{version}" / "main.py").write_text(f"VERSION = '{version}'\n")
    (root / "strategy.yaml").write_text(STRATEGY.format(id=rollout_id))
    return root


def test_a_rollout_from_a_folder(stack: Stack, tmp_path: Path) -> None:
    folder = release_folder(tmp_path / "release", "cli-rollout-1")
    target = tmp_path / "target.geojson"
    target.write_text(json.dumps(AREA))
    uploaded = stack.ok("rollouts", "upload", str(folder), "--target", str(target), "--name", "one")
    assert uploaded.strip() == "rollout cli-rollout-1 (one): draft"
    refused(
        stack.cli("rollouts", "upload", str(folder), "--target", str(target)),
        1,
        "cli-rollout-1",
    )  # the same id twice
    assert stack.ok("rollouts", "start", "cli-rollout-1").strip().endswith(": active")
    refused(stack.cli("rollouts", "start", "cli-rollout-1"), 1, "cannot 'start'")
    assert stack.json("rollouts", "pause", "cli-rollout-1")["state"] == "paused"
    assert stack.json("rollouts", "resume", "cli-rollout-1")["state"] == "active"

    # a second one from a strategy file and an archive, started at once
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for version in ("v1", "v2"):
            zf.writestr(f"fns/checkout_{version}/main.py", f"VERSION = '{version}'\n")
    (tmp_path / "fns.zip").write_bytes(buffer.getvalue())
    (tmp_path / "strategy.yaml").write_text(STRATEGY.format(id="cli-rollout-2"))
    second = stack.json(
        "rollouts",
        "create",
        "--strategy",
        str(tmp_path / "strategy.yaml"),
        "--archive",
        str(tmp_path / "fns.zip"),
        "--target",
        str(target),
        "--priority",
        "3",
    )
    assert (second["id"], second["state"], second["priority"]) == ("cli-rollout-2", "active", 3)

    listed = stack.json("rollouts", "list")
    assert [r["id"] for r in listed["items"]] == ["cli-rollout-2", "cli-rollout-1"]
    table = stack.ok("rollouts", "list", "--state", "active")
    assert "cli-rollout-1" in table
    assert "cli-rollout-2" in table
    shown = stack.ok("rollouts", "show", "cli-rollout-1")
    assert "canary" in shown
    assert "WaitForSignal" in shown
    status = stack.json("rollouts", "status", "cli-rollout-1")
    assert (status["rollout"]["state"], status["children"]) == ("active", 0)
    assert "children" in stack.ok("rollouts", "status", "cli-rollout-1")
    assert stack.json("rollouts", "children", "cli-rollout-1")["items"] == []

    aborted = stack.ok("rollouts", "abort", "cli-rollout-1", "--reason", "enough")
    assert aborted.strip() == "rollout cli-rollout-1 (one): aborted (enough)"
    watched = stack.cli("rollouts", "watch", "cli-rollout-1")
    assert watched.returncode == 1, watched.stdout + watched.stderr  # aborted: not completed
    assert "rollout cli-rollout-1 aborted" in watched.stdout
    as_json = stack.cli("rollouts", "watch", "cli-rollout-1", "--json", "--interval", "0.2")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["rollout"]["state"] == "aborted"
