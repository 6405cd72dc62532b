"""``serve --server granian|uvicorn``: the same behaviour under both HTTP servers.

Real processes on 127.0.0.1 (the access lines in text and JSON, the "listening on" line with
the port bound for ``--port 0``, SIGTERM: exit 0 after the lifespan's shutdown, a request in
progress answered), :func:`release_coordinator.server.servers.run` in this process with a
real socket (the lifespan's order, the grace), and the refusal of a server that is not
installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve_process import ACCESS, HOST, STOP_WITHIN, Server, access_lines

from release_coordinator.cli import main
from release_coordinator.errors import ConfigurationError
from release_coordinator.server import servers
from release_coordinator.server.serve_settings import listen_socket as _listen

SERVERS = pytest.mark.parametrize("server", servers.SERVERS)
AREA = {"type": "Polygon", "coordinates": [[[5, 45], [6, 45], [6, 46], [5, 46], [5, 45]]]}
ACCESS_LINE = re.compile(r'127\.0\.0\.1:\d+ "(GET|POST) (/[a-z_]*)" (\d{3}) \d+\.\dms$')
WITHIN = 20.0  # seconds: a limit for waiting, never an assertion on time


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RC_")}


def slow_request(port: int, body: bytes) -> socket.socket:
    """A ``POST /poll`` whose head and first body byte are sent, the rest not yet."""
    conn = socket.create_connection((HOST, port), timeout=WITHIN)
    head = (
        f"POST /poll HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    conn.sendall(head + body[:1])
    return conn


def answer(conn: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.slow
@SERVERS
def test_the_same_lines_and_a_clean_stop_under_each_server(tmp_path: Path, server: str) -> None:
    env = environment()
    env["RC_OPERATOR_TOKENS"] = "ops-" + os.urandom(16).hex()
    served = Server(tmp_path, env, tmp_path / "serve.log", "--server", server)  # over SQLite
    try:
        with httpx.Client(timeout=5.0) as client:
            served.wait_ready(client)  # GET /status
            assert client.get(f"{served.base}/releases").status_code == 401  # no token
            poll = client.post(f"{served.base}/poll", json={"id": "", "geographic_area": AREA})
            assert poll.status_code == 200
            child = poll.json()["id"]
        port = int(served.base.rsplit(":", 1)[1])
        assert port != 0
        # a request in progress when SIGTERM comes is answered before the stop
        body = json.dumps({"id": child, "geographic_area": AREA}).encode()
        conn = slow_request(port, body)
        time.sleep(0.3)
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.sendall(body[1:])
        answered = answer(conn)
        conn.close()
        # the one SIGTERM stops it: wait (a second one, while it closes its stores, would be
        # another story: a supervisor that insists)
        with contextlib.suppress(subprocess.TimeoutExpired):
            served.process.wait(timeout=STOP_WITHIN)
    finally:
        status = served.terminate()  # (no second signal to a process that exited)
    text = served.stderr()
    assert status == 0, text
    assert answered.startswith(b"HTTP/1.1 200"), answered
    assert child.encode() in answered
    lines = access_lines(text)
    shown = [ACCESS_LINE.search(line) for line in lines]
    assert all(shown), lines
    requests = [(m[1], m[2], m[3]) for m in shown if m]
    assert ("GET", "/releases", "401") in requests
    assert requests.count(("POST", "/poll", "200")) == 2  # the slow one too
    assert f"server: {server} " in text
    assert re.search(r"(?i)application shutdown complete", text), text
    assert text.rstrip().endswith("stopped")
    assert "experimental" not in text.lower()


@pytest.mark.slow
@SERVERS
def test_json_lines_under_each_server(tmp_path: Path, server: str) -> None:
    options = ("--server", server, "--log-format", "json", "--db", "memory", "--allow-anonymous")
    served = Server(tmp_path, environment(), tmp_path / "serve.log", *options)
    try:
        with httpx.Client(timeout=5.0) as client:
            served.wait_ready(client)
            poll = client.post(f"{served.base}/poll", json={"id": "", "geographic_area": AREA})
            assert poll.status_code == 200
    finally:
        status = served.terminate()
    assert status == 0
    entries = [json.loads(line) for line in served.stderr().splitlines() if line.strip()]
    access = [e for e in entries if e["logger"] == ACCESS]
    assert [e["message"] for e in access][-1] == "POST /poll 200"
    for entry in access:
        assert set(entry) >= {"request_id", "method", "route", "status", "duration_ms", "client"}
        assert entry["client"].startswith("127.0.0.1:")
    assert any("listening on http://127.0.0.1:" in e["message"] for e in entries)


# -- servers.run in this process ------------------------------------------------------------------


class Recorder:
    """An ASGI app that notes its lifespan and requests: ``/slow`` takes ``pause`` seconds,
    ``/hang`` never ends by itself."""

    def __init__(self, pause: float = 0.5) -> None:
        self.events: list[str] = []
        self.pause = pause
        self.up = asyncio.Event()  # the lifespan's startup is done
        self.started = asyncio.Event()  # a request is in progress

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].split(".")[1]
                self.events.append(kind)
                await send({"type": f"{message['type']}.complete"})
                self.up.set()
                if kind == "shutdown":
                    return
        path = scope["path"]
        self.events.append(f"{path} started")
        self.started.set()
        try:
            await asyncio.sleep(self.pause if path == "/slow" else 3600)
        except asyncio.CancelledError:
            self.events.append(f"{path} canceled")
            raise
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"done"})
        self.events.append(f"{path} done")


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def stopped_during(app: Recorder, server: str, path: str, grace: float) -> bytes:
    """``path`` asked of ``server`` running ``app``, SIGTERM once the request is in progress;
    what the client got (``servers.run`` must answer True)."""
    with _listen(HOST, 0) as sock:
        port = sock.getsockname()[1]
        running = asyncio.ensure_future(
            servers.run(server, app, sock, log_level="warning", grace=grace)
        )
        await asyncio.wait_for(app.up.wait(), WITHIN)
        while True:  # refused until the server listens
            asked = asyncio.ensure_future(get(port, path))
            started = asyncio.ensure_future(app.started.wait())
            await asyncio.wait({asked, started}, timeout=WITHIN, return_when="FIRST_COMPLETED")
            if started.done():
                break
            started.cancel()
            assert asked.done()
            assert isinstance(asked.exception(), ConnectionError)
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        got = await asyncio.wait_for(asked, WITHIN)
        assert await asyncio.wait_for(running, WITHIN) is True
    return got


@pytest.mark.anyio
@SERVERS
async def test_a_request_in_progress_ends_before_the_lifespan_shutdown(server: str) -> None:
    app = Recorder()
    got = await stopped_during(app, server, "/slow", grace=10)
    assert got.startswith(b"HTTP/1.1 200")
    assert got.endswith(b"done")
    assert app.events == ["startup", "/slow started", "/slow done", "shutdown"]


@pytest.mark.anyio
@SERVERS
async def test_a_request_still_open_after_the_grace_is_canceled(server: str) -> None:
    app = Recorder()
    got = await stopped_during(app, server, "/hang", grace=1)
    assert not got.startswith(b"HTTP/1.1 200")
    assert app.events == ["startup", "/hang started", "/hang canceled", "shutdown"]


@pytest.mark.anyio
@SERVERS
async def test_a_failed_startup_serves_nothing(server: str) -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        raise RuntimeError("cannot start")

    with _listen(HOST, 0) as sock:
        assert await servers.run(server, broken, sock, log_level="critical") is False


# -- choosing the server --------------------------------------------------------------------------


def test_granian_is_the_default_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert servers.check(None) == servers.default_server()
    monkeypatch.setattr(servers, "installed", lambda name: True)
    assert servers.check(None) == "granian"
    monkeypatch.setattr(servers, "installed", lambda name: name == "uvicorn")
    assert servers.check(None) == "uvicorn"


@pytest.mark.parametrize("server", servers.SERVERS)
def test_a_server_that_is_not_installed_is_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], server: str
) -> None:
    monkeypatch.setattr(servers, "installed", lambda name: name != server)
    with pytest.raises(ConfigurationError, match=rf"--server {server}: {server} is not installed"):
        servers.check(server)
    with pytest.raises(ConfigurationError, match="must be one of granian, uvicorn"):
        servers.check("gunicorn")
    argv = ["serve", "--db", "memory", "--allow-anonymous", "--port", "0", "--server", server]
    assert main(argv) == 2
    assert "release-coordinator[server]" in capsys.readouterr().err
