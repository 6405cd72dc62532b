"""HTTP poll benchmark: ``POST /poll`` through ``release-coordinator serve``, side by side.

In one run, interleaved round after round, with the same load on each (``wrk`` when it is
installed, else the Python client below), it measures:

- **the ceiling** of each HTTP server (``--servers``: granian and uvicorn): a minimal ASGI app
  answering a constant JSON (it reads the request body, nothing else), run by
  :func:`release_coordinator.server.servers.run` as ``serve`` runs its app (same server
  options, same socket from ``serve``'s ``listen_socket``), in its own process;
- **``/poll`` of ``serve``** under each server over each store (``--db``: its SQLite file in a
  temporary working directory, ``memory``, ``postgres``, a URL), ``--children`` children
  registered (10,000 small squares with given ids) and ``--rollouts`` active rollouts (disjoint
  bands of the map, each ``--rollout-share`` of it: about ``rollouts * rollout-share`` of the
  polls get a release offered);
- ``/poll`` of ``serve --workers 2`` on PostgreSQL (:data:`WORKERS_ROWS`; ``--no-workers``
  leaves it out);
- with ``--peer URL``, **another server that speaks the child protocol** (the Go release
  manager, say) under the same load: its children registered first (each polls once with an
  empty id and keeps the id it is given), on 127.0.0.1 only.

Then the ratios: ``/poll`` over its own server's ceiling (target >= :data:`TARGET_RATIO`), the
default server over uvicorn on the same store (target >= :data:`TARGET_SPEEDUP`, "today's"
``serve`` being uvicorn on SQLite), and the peer over the default ``serve``. Each ratio is
taken within a round, and the median over the rounds is shown.

**The load.** ``wrk`` (``--client wrk``, the default when it is on the PATH): ``--threads`` 2,
``--concurrency`` 64 keep-alive connections, a Lua script picking a random child's request for
each call; a ``--warmup`` run, then the ``--duration`` run measured (requests/s, p50, p99 from
its latency distribution, non-2xx answers and socket errors). Without wrk, ``--client raw``:
a minimal HTTP/1.1 client on asyncio streams in ``--client-processes`` processes (pre-encoded
requests, reads ``Content-Length`` bytes; about 40 us of CPU per request), or ``--client
httpx`` (far more CPU per request than the servers measured: it would measure itself).

**Who is the bottleneck.** The table gives each side's CPU use during the window (``% of one
core``, from ``/proc``) and the server's CPU time per request (``CPU/req``; ``threads``: the part
spent outside the main thread: granian's Rust threads, the SQLite driver's thread), which does
not depend on how fast the client is. A server near 100 % is the bottleneck; a client near
100 % means the figure is the client's. On a 2-core machine client and server share the cores:
compare the ratios, not the absolute figures, between machines.

**Between measurements** each ``serve`` not measured is paused (SIGSTOP), so that its ticks
cost the one measured nothing; they run with ``--lost-after 3600`` so that no child counts
as lost after a pause (a fleet that polls steadily has none). ``--log-level warning`` by
default (no line per request); ``--log-level warning,info`` measures both (the log goes to a
file). The ceiling runs at the first level given.

    python benchmarks/http_poll.py [--servers granian,uvicorn] [--db sqlite,memory]
                                   [--children 10000] [--rollouts 3] [--concurrency 64]
                                   [--threads 2] [--duration 15] [--warmup 2] [--rounds 2]
                                   [--client wrk|raw|httpx] [--peer URL]
                                   [--log-level warning[,info]] [--profile FILE] [--no-workers]

``--db postgres`` is a schema of its own at ``RC_POSTGRES_URL`` (default the local server),
dropped afterwards. ``--profile FILE`` runs the first ``/poll`` server under cProfile, switched
on only during its measured windows (SIGUSR1/SIGUSR2), and prints where its main thread spends
its time; its figures do not compare with the others' then (the targets are not judged).
docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import io
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench_bundle import STRATEGY, archive, square

HOST = "127.0.0.1"
OPERATOR_TOKEN = "bench-" + secrets.token_hex(16)
POSTGRES_URL = os.environ.get("RC_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: ``/poll`` requests/s over the same server's ceiling's, same round.
TARGET_RATIO = 0.8
#: the default server's ``/poll`` requests/s over uvicorn's, same store, same round.
TARGET_SPEEDUP = 2.0
#: ``(server, store, workers)`` of the rows of ``serve --workers N`` (the default server on
#: PostgreSQL: the database several processes share).
WORKERS_ROWS: list[tuple[str, str, int]] = [("granian", "postgres", 2)]
WORKERS_PLACEHOLDER = "/poll granian postgres --workers 2"
WEST, SOUTH, EAST, NORTH = -10.0, 35.0, 30.0, 60.0
CHILD_SIZE = 0.05

# -- the ceiling: a constant JSON, served as ``serve`` serves its app ------------------------------

CEILING_BODY = b'{"id":"CH-bench-000000","new_release":""}'


async def ceiling_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The minimal ASGI app: reads the request body (as ``serve`` reads one: until it has
    the ``Content-Length`` bytes, or the last message), answers a constant JSON."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    length = next((int(v) for k, v in scope["headers"] if k == b"content-length"), -1)
    size, more = 0, True
    while more and size != length:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(CEILING_BODY)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": CEILING_BODY})


def serve_ceiling(port: int, log_level: str, server: str) -> None:
    """The ceiling's server process: ``server`` run as ``serve_async`` runs it."""
    from release_coordinator.server import servers
    from release_coordinator.server.serve_settings import listen_socket as _listen

    # as ``release-coordinator serve`` configures logging (cli.main)
    logging.basicConfig(
        level=logging.getLevelName(log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def serving() -> bool:
        with _listen(HOST, port) as sock:
            return await servers.run(server, ceiling_app, sock, log_level=log_level)

    sys.exit(0 if asyncio.run(serving()) else 1)


def profiled_serve(path: str, argv: list[str]) -> None:
    """``release-coordinator serve`` with a profiler on its main thread: each SIGUSR1 starts a
    new one, each SIGUSR2 stops it and writes its figures to ``path.N`` (N = 0, 1, ...)."""
    import cProfile

    from release_coordinator.cli import main as cli_main

    profilers: list[cProfile.Profile] = []

    def on(signum: int, frame: object) -> None:
        profilers.append(cProfile.Profile())
        profilers[-1].enable()

    def off(signum: int, frame: object) -> None:
        profilers[-1].disable()
        profilers[-1].dump_stats(f"{path}.{len(profilers) - 1}")

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    sys.exit(cli_main(argv))


# -- the client (its own process) ------------------------------------------------------------------


def _content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end])


async def _raw_connection(
    port: int,
    requests: Sequence[bytes],
    rng: random.Random,
    start: float,
    end: float,
    out: dict[str, Any],
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    latencies: array.array[int] = out["latencies"]
    window = start + out["warmup"]
    clock = time.perf_counter_ns
    wall = time.time
    pick = rng.randrange
    n = len(requests)
    await asyncio.sleep(max(0.0, start - wall()))
    try:
        while True:
            began = wall()
            if began >= end:
                break
            t0 = clock()
            writer.write(requests[pick(n)])
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(_content_length(head))
            t1 = clock()
            if began >= window and wall() <= end:
                latencies.append(t1 - t0)
                if head[9:12] != b"200":
                    out["errors"] += 1
                elif b'"new_release":""' not in body:
                    out["offered"] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _httpx_connections(
    port: int,
    bodies: Sequence[bytes],
    concurrency: int,
    rng: random.Random,
    start: float,
    end: float,
    out: dict[str, Any],
) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    latencies: array.array[int] = out["latencies"]
    window = start + out["warmup"]
    clock = time.perf_counter_ns
    wall = time.time
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits) as client:

        async def one() -> None:
            await asyncio.sleep(max(0.0, start - wall()))
            while True:
                began = wall()
                if began >= end:
                    break
                t0 = clock()
                answer = await client.post(
                    "/poll", content=bodies[rng.randrange(len(bodies))], headers=headers
                )
                t1 = clock()
                if began >= window and wall() <= end:
                    latencies.append(t1 - t0)
                    if answer.status_code != 200:
                        out["errors"] += 1
                    elif b'"new_release":""' not in answer.content:
                        out["offered"] += 1

        await asyncio.gather(*(one() for _ in range(concurrency)))


async def _client(
    kind: str,
    port: int,
    bodies: Sequence[bytes],
    concurrency: int,
    seed: int,
    start: float,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    rng = random.Random(seed)
    end = start + warmup + duration
    out: dict[str, Any] = {
        "latencies": array.array("q"),
        "errors": 0,
        "offered": 0,
        "warmup": warmup,
    }

    async def cpu_in_window() -> None:
        await asyncio.sleep(max(0.0, start + warmup - time.time()))
        before = time.process_time()
        await asyncio.sleep(max(0.0, end - time.time()))
        out["cpu"] = time.process_time() - before

    watcher = asyncio.create_task(cpu_in_window())
    if kind == "raw":
        prefix = (
            f"POST /poll HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        requests = [prefix + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
        await asyncio.gather(
            *(
                _raw_connection(port, requests, random.Random(rng.random()), start, end, out)
                for _ in range(concurrency)
            )
        )
    else:
        await _httpx_connections(port, bodies, concurrency, rng, start, end, out)
    await watcher
    del out["warmup"]
    return out


def client_process(conn: Any, *args: Any) -> None:
    """One client process: runs :func:`_client` and sends its figures back over ``conn``."""
    try:
        out = asyncio.run(_client(*args))
        out["latencies"] = out["latencies"].tobytes()
        conn.send(out)
    except BaseException as error:
        conn.send({"failed": f"{type(error).__name__}: {error}"})
        raise
    finally:
        conn.close()


# -- servers ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (all its threads, those gone too), or of one of
    its threads."""
    where = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(where) as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def listening_pid(port: int) -> int | None:
    """The process listening on ``HOST:port`` (from ``/proc``), if this user may see it."""
    wanted = f"{socket.htonl(0x7F000001):08X}:{port:04X}"  # 127.0.0.1 as /proc/net/tcp writes it
    inodes = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
    return None


class Server:
    """A server on 127.0.0.1: a subprocess of ours (stdout and stderr into a file), or with
    ``command`` None the peer at ``port`` (its process found in /proc if it is local)."""

    def __init__(
        self,
        label: str,
        command: list[str] | None,
        cwd: Path,
        env: dict[str, str],
        *,
        port: int = 0,
        profiled: bool = False,
    ) -> None:
        self.label = label
        #: SIGUSR1/SIGUSR2 switch its profiler on and off (see :func:`profiled_serve`).
        self.profiled = profiled
        self.paused = False
        self.log_path = cwd / f"{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None
        if command is None:
            self.port = port
            self.pid = listening_pid(port)
            return
        self.port = free_port()
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def wait_ready(self, path: str, patience: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + patience
        async with httpx.AsyncClient(base_url=self.base) as client:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.label} exited: {self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(path)).status_code < 500:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.label} did not start: {self.tail()}")
                await asyncio.sleep(0.1)

    def pids(self) -> list[int]:
        """The server's process and its children (``serve --workers``: the workers)."""
        if self.pid is None:
            return []
        return [self.pid, *child_pids(self.pid)]

    def cpu(self, main_thread: bool = False) -> float | None:
        """CPU seconds of the server (its workers included), or of its main thread(s)."""
        if self.pid is None:
            return None
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid, pid if main_thread else None)
        return total

    def pause(self) -> None:
        if self.process is not None and not self.paused:
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            self.paused = False

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL on a schema of its own at ``RC_POSTGRES_URL``, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"rc_bench_{secrets.token_hex(4)}"
    libpq = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- the fleet -------------------------------------------------------------------------------------


def fleet(children: int, seed: int) -> list[tuple[str, bytes]]:
    """``(id, POST /poll body)`` of every child: a small square somewhere on the map."""
    rng = random.Random(seed)
    out = []
    for i in range(children):
        lon = rng.uniform(WEST, EAST - CHILD_SIZE)
        lat = rng.uniform(SOUTH, NORTH - CHILD_SIZE)
        child_id = f"CH-bench-{i:06d}"
        body = {
            "id": child_id,
            "geographic_area": square(lon, lat, CHILD_SIZE),
            "number_of_children": 0,
        }
        out.append((child_id, json.dumps(body, separators=(",", ":")).encode()))
    return out


def band(index: int, share: float) -> dict[str, Any]:
    """The ``index``-th band of the map, ``share`` of its width, full height."""
    width = (EAST - WEST) * share
    w = WEST + index * width
    e = w + width
    ring = [[w, SOUTH], [e, SOUTH], [e, NORTH], [w, NORTH], [w, SOUTH]]
    return {"type": "Polygon", "coordinates": [ring]}


async def register(
    port: int, queue: Iterator[tuple[str, bytes]], assigned: dict[str, str] | None = None
) -> None:
    """Polls for the children of ``queue`` one after another on one connection (the raw
    client: httpx would take longer than the server, see the module docstring). Each answer
    names the child's id: the one it sent, or with ``assigned`` (a peer, polled with an empty
    id) the one the server gave it, kept there."""
    reader, writer = await asyncio.open_connection(HOST, port)
    prefix = (
        f"POST /poll HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    try:
        for child_id, body in queue:
            writer.write(prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            answer = await reader.readexactly(_content_length(head))
            given = json.loads(answer).get("id") if head[9:12] == b"200" else None
            if assigned is not None and given:
                assigned[child_id] = given
            elif given != child_id:
                raise RuntimeError(f"registering {child_id}: {head[:12]!r} {answer[:300]!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def poll_all(
    port: int,
    queue: Iterator[tuple[str, bytes]],
    concurrency: int,
    assigned: dict[str, str] | None = None,
) -> None:
    await asyncio.gather(*(register(port, queue, assigned) for _ in range(concurrency)))


def peer_fleet(server: Server, children: list[tuple[str, bytes]], concurrency: int) -> list[bytes]:
    """Registers the fleet at a peer (each child polls with an empty id) and answers the
    bodies of their polls with the ids it gave them."""
    anonymous = []
    for child_id, body in children:
        fields = json.loads(body)
        fields["id"] = ""
        anonymous.append((child_id, json.dumps(fields, separators=(",", ":")).encode()))
    assigned: dict[str, str] = {}
    asyncio.run(poll_all(server.port, iter(anonymous), concurrency, assigned))
    bodies = []
    for child_id, body in children:
        fields = json.loads(body)
        fields["id"] = assigned[child_id]
        bodies.append(json.dumps(fields, separators=(",", ":")).encode())
    return bodies


def idle_cpu(server: Server, seconds: float = 3.0) -> float:
    """The server's CPU use (share of one core) while nobody asks it anything."""
    assert server.pid is not None
    before = cpu_seconds(server.pid)
    time.sleep(seconds)
    return (cpu_seconds(server.pid) - before) / seconds


async def set_up(
    server: Server, children: list[tuple[str, bytes]], rollouts: int, share: float, concurrency: int
) -> str:
    """Registers the children (each polls once with its id), then creates the rollouts (or
    finds them there, over a database kept from before). Answers a line saying what it did."""
    import httpx

    started = time.perf_counter()
    await poll_all(server.port, iter(children), concurrency)
    registered = time.perf_counter() - started
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
        functions = base64.b64encode(archive()).decode()
        operator = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
        started = time.perf_counter()
        for i in range(rollouts):
            rollout_id = f"bench-{i}"
            body = {
                "strategy": STRATEGY.format(id=rollout_id),
                "archive": functions,
                "target": band(i, share),
                "name": f"bench {i}",
                "priority": i % 3,
            }
            answer = await client.post("/rollouts", json=body, headers=operator)
            if answer.status_code == 409:  # there already (a database kept from before)
                continue
            if answer.status_code != 201:
                raise RuntimeError(f"POST /rollouts: {answer.status_code} {answer.text}")
        created = time.perf_counter() - started
    return (
        f"{len(children):,} children polled once in {registered:.1f} s "
        f"({len(children) / registered:,.0f}/s, {concurrency} at once); "
        f"{rollouts} rollouts created in {created:.2f} s"
    )


# -- measuring -------------------------------------------------------------------------------------


class Row:
    def __init__(self, label: str, figures: dict[str, Any]) -> None:
        self.label = label
        self.__dict__.update(figures)


class Window:
    """The server's CPU and log around a measured window."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cpu, self.loop = server.cpu(), server.cpu(main_thread=True)
        self.log = server.log_size()
        self.at = time.time()

    def figures(self, count: int, duration: float) -> dict[str, Any]:
        cpu, loop = self.server.cpu(), self.server.cpu(main_thread=True)
        elapsed = time.time() - self.at
        if cpu is None or self.cpu is None or loop is None or self.loop is None:
            server_cpu = cpu_per_request = threads = None
        else:
            server_cpu = (cpu - self.cpu) / elapsed
            cpu_per_request = (cpu - self.cpu) / max(count, 1) * 1e6
            # CPU of the server's other threads (granian's, the SQLite driver's, a pool's)
            threads = max(0.0, cpu - self.cpu - (loop - self.loop)) / max(count, 1) * 1e6
        return {
            "rps": count / duration,
            "server_cpu": server_cpu,
            "cpu_per_request": cpu_per_request,
            "threads_per_request": threads,
            "log_per_request": (self.server.log_size() - self.log) / max(count, 1),
        }


def lua_script(path: Path, bodies: Sequence[bytes]) -> Path:
    """A wrk script sending ``POST /poll`` with one of ``bodies`` at random per request (the
    requests formatted once per thread; each thread its own seed)."""
    quoted = ",\n".join(f"[==[{body.decode()}]==]" for body in bodies)
    path.write_text(
        f"""local bodies = {{
{quoted}
}}
local requests = {{}}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed or 1)
  local headers = {{["Content-Type"] = "application/json"}}
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", "/poll", headers, body)
  end
end

function request()
  return requests[math.random(#requests)]
end
"""
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_wrk(server: Server, script: Path, args: argparse.Namespace, label: str) -> Row:
    """A ``--warmup`` run of wrk, then a ``--duration`` run measured."""
    command = ["wrk", "-t", str(args.threads), "-c", str(args.concurrency), "-s", str(script)]
    url = f"{server.base}/poll"
    if args.warmup > 0:
        subprocess.run(
            [*command, "-d", f"{args.warmup:g}s", url], check=True, capture_output=True, text=True
        )
    window = Window(server)
    client_before = _children_cpu()
    done = subprocess.run(
        [*command, "-d", f"{args.duration:g}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
    )
    client_cpu = (_children_cpu() - client_before) / args.duration
    out = done.stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if found is None:
        raise RuntimeError(f"wrk said: {out}{done.stderr}")
    count = int(found[1])
    figures = window.figures(count, args.duration)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    figures.update(
        p50=_ms(latency["50"]),
        p99=_ms(latency["99"]),
        client_cpu=client_cpu,
        offered=None,
        errors=errors,
    )
    return Row(label, figures)


def measure_python(
    server: Server, bodies: list[bytes], args: argparse.Namespace, seed: int, label: str
) -> Row:
    """One measurement: the Python client processes against ``server``; figures of the
    window."""
    context = multiprocessing.get_context("spawn")
    processes = args.client_processes
    share = [
        args.concurrency // processes + (i < args.concurrency % processes) for i in range(processes)
    ]
    start = time.time() + 1.5 + 0.3 * processes  # time to spawn and connect
    pipes, workers = [], []
    for i in range(processes):
        parent, child = context.Pipe(duplex=False)
        worker = context.Process(
            target=client_process,
            args=(
                child,
                args.client,
                server.port,
                bodies,
                share[i],
                seed * 1000 + i,
                start,
                args.warmup,
                args.duration,
            ),
        )
        worker.start()
        child.close()
        pipes.append(parent)
        workers.append(worker)
    window_start = start + args.warmup
    window_end = window_start + args.duration
    time.sleep(max(0.0, window_start - time.time()))
    window = Window(server)
    time.sleep(max(0.0, window_end - time.time()))
    results = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        raise RuntimeError(
            f"client failed against {label}: {failed[0]}; the server's log ends:\n{server.tail()}"
        )
    latencies: array.array[int] = array.array("q")
    for result in results:
        latencies.frombytes(result["latencies"])
    count = len(latencies)
    if not count:
        raise RuntimeError(f"no answer from {label} within the window")
    ordered = sorted(latencies)
    figures = window.figures(count, args.duration)
    figures.update(
        p50=ordered[count // 2] / 1e6,
        p99=ordered[min(count - 1, int(count * 0.99))] / 1e6,
        client_cpu=sum(r["cpu"] for r in results) / args.duration,
        offered=sum(r["offered"] for r in results) / count,
        errors=sum(r["errors"] for r in results),
    )
    return Row(label, figures)


class Target:
    """What one row measures: a server, the bodies it is sent, its kind."""

    def __init__(
        self, label: str, server: Server, bodies: list[bytes], kind: str, name: str, db: str = ""
    ) -> None:
        self.label, self.server, self.bodies = label, server, bodies
        self.kind, self.name, self.db = kind, name, db  # kind: ceiling, poll, peer
        self.script: Path | None = None
        self.rows: list[Row] = []

    def measure(self, args: argparse.Namespace, seed: int, folder: Path) -> Row:
        self.server.resume()
        try:
            if self.server.profiled:
                self.server.process.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
            if args.client == "wrk":
                if self.script is None:
                    name = re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-")
                    self.script = lua_script(folder / f"{name}.lua", self.bodies)
                row = measure_wrk(self.server, self.script, args, self.label)
            else:
                row = measure_python(self.server, self.bodies, args, seed, self.label)
            if self.server.profiled:
                self.server.process.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
        finally:
            if self.kind == "poll":
                self.server.pause()
        self.rows.append(row)
        return row


HEADER = (
    f"{'':34} {'requests/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>10} "
    f"{'CPU/req':>8} {'threads':>8} {'client CPU':>10} {'offered':>7} {'errors':>6}"
)


def _share(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width - 1}.0%} "


def _us(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>6.0f}us"


def show(row: Row) -> None:
    offered = f"{'-':>7}" if row.offered is None else f"{row.offered:>7.1%}"
    print(
        f"{row.label:34} {row.rps:>10,.0f} {row.p50:>7.2f} {row.p99:>7.2f} "
        f"{_share(row.server_cpu, 10)} {_us(row.cpu_per_request)} "
        f"{_us(row.threads_per_request)} {_share(row.client_cpu, 10)} {offered} {row.errors:>6}",
        flush=True,
    )


def _package(filename: str, function: str) -> str:
    """Where a profiled function lives: a site package, a module of this library, the
    standard library, or a built-in (by name)."""
    if filename == "~":
        return f"built-in {function}"
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if "/release_coordinator/" in filename:
        return "release_coordinator/" + filename.split("/release_coordinator/")[1]
    return "stdlib " + filename.rsplit("/", 1)[-1]


def print_profile(what: str, paths: list[str], top: int) -> None:
    import pstats

    stats = pstats.Stats(*paths, stream=io.StringIO())
    by_package: dict[str, float] = {}
    for (filename, _, function), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = _package(filename, function)
        by_package[key] = by_package.get(key, 0.0) + own
    total = sum(by_package.values()) or 1.0
    print(f"\n-- cProfile of the /poll server's main thread, {what}: own time by package --")
    for key, own in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{own:8.3f} s {own / total:6.1%}  {key}")
    stream = io.StringIO()
    stats.stream = stream  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    text = stream.getvalue()
    print(f"\n-- the same, top {top} functions by own time --")
    print(text[text.find("   ncalls") :].rstrip())


# -- the run ---------------------------------------------------------------------------------------


def implementations(names: Sequence[str]) -> str:
    from release_coordinator.server import servers

    def have(module: str) -> bool:
        try:
            __import__(module)
        except ImportError:
            return False
        return True

    shown = []
    for name in names:
        text = servers.describe(name)
        if name == "uvicorn":
            loop = "uvloop" if have("uvloop") else "asyncio"
            http = "httptools" if have("httptools") else "h11"
            text += f" (loop {loop}, HTTP {http})"
        shown.append(text)
    return "; ".join(shown)


def store_env(db: str, stack: contextlib.ExitStack) -> tuple[dict[str, str], str]:
    """``RC_DB`` for the store ``db`` (``sqlite``: none, serve's default file in its working
    directory) and how to describe it."""
    if db == "sqlite":
        return {}, "SQLite file in its working directory (serve's default)"
    if db == "memory":
        return {"RC_DB": "memory"}, "memory"
    if db == "postgres":
        return {"RC_DB": stack.enter_context(postgres_schema())}, f"PostgreSQL at {POSTGRES_URL}"
    return {"RC_DB": db}, "the given URL"


def start_poll_server(
    label: str,
    serve_options: list[str],
    cwd: Path,
    env: dict[str, str],
    children: list[tuple[str, bytes]],
    args: argparse.Namespace,
    profile: Path | None,
) -> Server:
    """``serve`` with ``serve_options``, its fleet registered and live, paused (SIGSTOP)."""
    here = Path(__file__).resolve()
    command = [sys.executable]
    if profile is not None:
        command += [str(here), "--profiled-serve", str(profile), "--"]
    else:
        command += ["-m", "release_coordinator"]
    command += ["serve", *serve_options, "--lost-after", "3600"]
    cwd.mkdir(parents=True, exist_ok=True)
    server = Server(label, command, cwd, env, profiled=profile is not None)
    try:
        asyncio.run(server.wait_ready("/openapi.json"))
        done = asyncio.run(
            set_up(server, children, args.rollouts, args.rollout_share, args.setup_concurrency)
        )
        idle = idle_cpu(server)
        # one more poll each: a fleet polling steadily is live (and the indexes warm)
        started = time.perf_counter()
        asyncio.run(poll_all(server.port, iter(children), args.setup_concurrency))
        took = time.perf_counter() - started
        print(
            f"{label}: {done}; every child polled again in {took:.1f} s "
            f"({len(children) / took:,.0f}/s); CPU while idle: {idle:.0%}, then "
            f"{idle_cpu(server):.0%} of a core",
            flush=True,
        )
    except BaseException:
        server.stop()
        raise
    server.pause()
    return server


def _median_ratio(tops: Sequence[Row], bottoms: Sequence[Row]) -> tuple[float, list[float]]:
    ratios = [top.rps / bottom.rps for top, bottom in zip(tops, bottoms, strict=True)]
    return statistics.median(ratios), ratios


def _verdict(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "NOT met"


def summary(targets: list[Target], args: argparse.Namespace) -> int:
    """The ratios, and the exit status: 1 if a target was not met (0 under a profiler)."""
    from release_coordinator.server.servers import default_server

    ceilings = {t.name: t for t in targets if t.kind == "ceiling"}
    polls = [t for t in targets if t.kind == "poll"]
    peers = [t for t in targets if t.kind == "peer"]
    met = True

    def line(what: str, ratio: float, ratios: list[float], judged: str = "") -> None:
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  {what:46} {ratio:6.2f}  (rounds: {shown}){judged}")

    print("\nmedians over the rounds (requests/s)")
    for target in targets:
        rps = statistics.median(row.rps for row in target.rows)
        cpu = [row.cpu_per_request for row in target.rows if row.cpu_per_request is not None]
        per = f"; server CPU {statistics.median(cpu):.0f} us/request" if cpu else ""
        print(f"  {target.label:46} {rps:>8,.0f}{per}")
    print(f"\nratios (requests/s, same round, median over {args.rounds} round(s))")
    if "granian" in ceilings and "uvicorn" in ceilings:
        line(
            "constant JSON: granian / uvicorn",
            *_median_ratio(ceilings["granian"].rows, ceilings["uvicorn"].rows),
        )
    for poll in polls:
        ratio, ratios = _median_ratio(poll.rows, ceilings[poll.name].rows)
        if "--workers" in poll.label:  # (several processes over another database: no target)
            line(f"{poll.label} / its ceiling", ratio, ratios)
            continue
        met &= ratio >= TARGET_RATIO
        line(
            f"{poll.label} / its ceiling",
            ratio,
            ratios,
            f"  target >= {TARGET_RATIO}: {_verdict(ratio, TARGET_RATIO)}",
        )
    default = default_server()
    for poll in polls:
        if poll.name != default:
            continue
        for other in polls:
            if other.name == "uvicorn" and other.db == poll.db and other is not poll:
                ratio, ratios = _median_ratio(poll.rows, other.rows)
                judged = ""
                if poll.db == "sqlite":  # today's serve: uvicorn on SQLite
                    met &= ratio >= TARGET_SPEEDUP
                    judged = f"  target >= {TARGET_SPEEDUP:g}: {_verdict(ratio, TARGET_SPEEDUP)}"
                line(f"{poll.label} / {other.label}", ratio, ratios, judged)
    reference = next((p for p in polls if p.name == default and p.db == "sqlite"), None)
    reference = reference or (polls[0] if polls else None)
    several = [p for p in polls if "--workers" in p.label]
    if not several:
        print(f"  {WORKERS_PLACEHOLDER + ' / ...':46}      -  (not measured: --no-workers)")
    for poll in several:
        if reference is not None and reference is not poll:
            line(f"{poll.label} / {reference.label}", *_median_ratio(poll.rows, reference.rows))
    for peer in peers:
        if reference is not None:
            line(f"{peer.label} / {reference.label}", *_median_ratio(peer.rows, reference.rows))
        for name, ceiling in ceilings.items():
            line(f"{peer.label} / constant JSON, {name}", *_median_ratio(peer.rows, ceiling.rows))
    worst = max((row.client_cpu for t in targets for row in t.rows), default=0.0)
    if worst > 0.9:
        print(
            f"  (the client used up to {worst:.0%} of a core: where it did, the figure may be "
            "the client's; the CPU per request does not depend on it)"
        )
    if args.profile:
        print("  (the first /poll server ran under a profiler: the targets are not judged)")
        return 0
    return 0 if met else 1


def run(args: argparse.Namespace) -> int:
    from release_coordinator.server import servers

    levels = [level.strip() for level in args.log_level.split(",") if level.strip()]
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    for name in names:
        servers.check(name)
    dbs = [db.strip() for db in args.db.split(",") if db.strip()]
    children = fleet(args.children, args.seed)
    bodies = [body for _, body in children]
    base_env = {k: v for k, v in os.environ.items() if k not in ("RC_DB", "RC_CALLBACK_TOKENS")}
    base_env["RC_OPERATOR_TOKENS"] = f"bench={OPERATOR_TOKEN}"
    base_env["PYTHONUNBUFFERED"] = "1"
    here = Path(__file__).resolve()
    targets: list[Target] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rc-http-poll-")))
        print(f"servers: {implementations(names)}; one process each, on {HOST}")
        load = (
            f"wrk, {args.threads} threads"
            if args.client == "wrk"
            else f"{args.client} client in {args.client_processes} process(es)"
        )
        print(
            f"load   : {load}, {args.concurrency} keep-alive connections, {len(children):,} "
            f"children; {args.warmup:g} s warm-up, then {args.duration:g} s measured; "
            f"{args.rounds} round(s), interleaved"
        )
        print(
            f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
            f"python {sys.version.split()[0]}"
        )
        for name in names:
            command = [sys.executable, str(here), "--serve-ceiling", "--server", name]
            ceiling = Server(
                f"ceiling {name}",
                [*command, "--log-level", levels[0]],
                folder,
                base_env,
            )
            stack.callback(ceiling.stop)
            asyncio.run(ceiling.wait_ready("/"))
            targets.append(Target(f"constant JSON, {name}", ceiling, bodies, "ceiling", name))
        profile = Path(args.profile).resolve() if args.profile else None
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
        profiled: Server | None = None
        rows = [(name, db, 1) for db in dbs for name in names]
        rows += [] if args.no_workers else [r for r in WORKERS_ROWS if r[0] in names]
        for name, db, workers in rows:
            db_env, described = store_env(db, stack)
            for level in levels:
                label = f"/poll {name}, {db if db in ('sqlite', 'memory', 'postgres') else 'URL'}"
                options = ["--server", name, "--log-level", level]
                if workers > 1:
                    label += f", --workers {workers}"
                    options += ["--workers", str(workers)]
                if len(levels) > 1:
                    label += f", log {level}"
                cwd = folder / re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
                server = start_poll_server(
                    f"{label} ({described})",
                    options,
                    cwd,
                    {**base_env, **db_env},
                    children,
                    args,
                    profile if profiled is None else None,
                )
                server.label = label
                stack.callback(server.stop)
                if profile is not None and profiled is None:
                    profiled = server
                targets.append(Target(label, server, bodies, "poll", name, db))
        if args.peer:
            url = urllib.parse.urlsplit(args.peer)
            if url.hostname not in (HOST, "localhost") or not url.port:
                raise SystemExit(f"--peer must be http://{HOST}:PORT (this machine only)")
            peer = Server(f"peer {args.peer}", None, folder, {}, port=url.port)
            asyncio.run(peer.wait_ready("/"))
            started = time.perf_counter()
            peer_bodies = peer_fleet(peer, children, args.setup_concurrency)
            took = time.perf_counter() - started
            where = f"pid {peer.pid}" if peer.pid else "its process not found: no CPU figures"
            print(
                f"/poll peer at {args.peer} ({where}): {len(children):,} children "
                f"registered in {took:.1f} s (each polled with an empty id once)",
                flush=True,
            )
            targets.append(Target("/poll peer", peer, peer_bodies, "peer", "peer"))
        print()
        print(HEADER)
        for round_ in range(args.rounds):
            print(f"-- round {round_ + 1} of {args.rounds}")
            for target in targets:
                show(target.measure(args, args.seed + round_, folder))
                logged = target.rows[-1].log_per_request
                if target.kind == "poll" and logged >= 1:
                    print(f"{'':34} access log: {logged:.0f} bytes per request")
        if profiled is not None:
            profiled.stop()
            windows = [f"{profile}.{n}" for n in range(args.rounds)]
            print_profile("the measured /poll windows", windows, 30)
    return summary(targets, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", default="granian,uvicorn", help="comma-separated")
    parser.add_argument(
        "--db", default="sqlite,memory", help="sqlite | memory | postgres | a URL; comma-separated"
    )
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument(
        "--rollout-share", type=float, default=0.1, help="share of the map each rollout targets"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads")
    parser.add_argument("--setup-concurrency", type=int, default=32)
    parser.add_argument(
        "--client",
        choices=["wrk", "raw", "httpx"],
        default="wrk" if shutil.which("wrk") else "raw",
        help="the load: wrk when installed, else a raw asyncio client",
    )
    parser.add_argument("--client-processes", type=int, default=1, help="raw and httpx only")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--no-workers",
        action="store_true",
        help="leave out the row of serve --workers 2 on PostgreSQL",
    )
    parser.add_argument("--peer", metavar="URL", help="another child-protocol server to measure")
    parser.add_argument(
        "--log-level",
        default="warning",
        help="serve's --log-level; several, comma-separated, are measured side by side",
    )
    parser.add_argument("--profile", metavar="FILE", help="run a /poll server under cProfile")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--server", default="uvicorn", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--profiled-serve", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("serve_argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profiled_serve:
        profiled_serve(args.profiled_serve, args.serve_argv)
        return
    if args.serve_ceiling:
        serve_ceiling(args.port, args.log_level.split(",")[0], args.server)
        return
    if args.concurrency < args.client_processes or args.client_processes < 1:
        parser.error("--concurrency must be at least --client-processes, which is at least 1")
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (Debian: apt-get install wrk)")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
