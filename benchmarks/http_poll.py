"""HTTP poll benchmark: ``POST /poll`` through ``release-coordinator serve`` against a ceiling.

Starts ``python -m release_coordinator serve`` on 127.0.0.1 in a temporary working directory
(SQLite file there by default), registers ``--children`` children (10,000 small squares with
given ids, ``--setup-concurrency`` polls at once), creates ``--rollouts`` active rollouts over the
operator API (``POST /rollouts``: strategy text + base64 ``fns.zip``; disjoint bands of the map,
each ``--rollout-share`` of it, so that about ``rollouts * rollout-share`` of the polls get a
release offered), polls every child once more (children registered more than a minute before
count as lost until they poll again, and a fleet that polls steadily has none), then measures
steady-state polls (random children, unchanged areas) with ``--concurrency`` keep-alive
connections: requests/s, p50 and p99 latency. It also prints the server's CPU use while idle,
after registering and after that second poll (what the manager's tick costs).

The **ceiling** is a minimal ASGI app answering a constant JSON (it reads the request body,
nothing else), served by the same setup as ``serve``: its own process, one uvicorn server with
the options ``serve`` gives uvicorn (same loop and HTTP implementation, ``lifespan="on"``, no
access log, no server header), on a socket opened by ``serve``'s own ``_listen`` (TCP_NODELAY),
hit by the same client with the same requests. The ceiling and ``/poll`` are measured in
alternation (``--rounds``); the ratio is ``/poll`` requests/s over the ceiling's of the same
round.

**The client** runs in ``--client-processes`` separate processes (default 1: the machine has 2
cores, one for the server, one for the client), so that it shares no GIL with the orchestration
or the server. By default it is a minimal HTTP/1.1 client on asyncio streams (``--client raw``:
pre-encoded requests, reads ``Content-Length`` bytes; about 40 us of CPU per request), because
httpx costs far more CPU per request than the servers measured here (with 32-64 connections in
one AsyncClient, a few milliseconds: about 200-300 requests/s at 90 % of a core) and would make
the ceiling the client's own (``--client httpx`` measures with ``httpx.AsyncClient`` anyway).
The registration uses the raw client too. To show who the bottleneck is, the table gives each
side's CPU use during the window (``% of one core``, from ``/proc``) and the server's CPU time
per request (``CPU/req``; ``threads``: the part spent outside the event loop's thread, e.g. by
the SQLite driver's thread), which does not depend on how fast the client is: a server near
100 % is the bottleneck; a client near 100 % means the ceiling is the client's.

**Logging.** ``serve`` logs one INFO line per request. By default the server runs with
``--log-level warning`` (no line per request); ``--log-level warning,info`` measures both (the
log goes to a file in the temporary directory, never to a pipe nobody reads). The ceiling runs
at the first level given and has no per-request line at any level.

    python benchmarks/http_poll.py [--children 10000] [--rollouts 3] [--concurrency 64]
                                   [--duration 8] [--rounds 2] [--log-level warning[,info]]
                                   [--db memory | postgres | URL] [--client raw|httpx]
                                   [--profile FILE]

``--db`` is passed to ``serve`` (through ``RC_DB``): default its SQLite file in the temporary
working directory; ``memory``; ``postgres`` (a schema of its own at ``RC_POSTGRES_URL``,
default the local server, dropped afterwards); or any database URL. ``--profile FILE`` runs the
``/poll`` server under cProfile, switched on only during the measured windows (SIGUSR1/SIGUSR2),
and prints where its main thread (the event loop) spends its time; the profiler slows the server
down, so those figures do not compare with the others' (the ratio is not judged then).

Target (HTTP issue): ``/poll`` requests/s >= 0.5 of the ceiling's.
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
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench_bundle import STRATEGY, archive, square

HOST = "127.0.0.1"
OPERATOR_TOKEN = "bench-" + secrets.token_hex(16)
POSTGRES_URL = os.environ.get("RC_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_RATIO = 0.5
WEST, SOUTH, EAST, NORTH = -10.0, 35.0, 30.0, 60.0
CHILD_SIZE = 0.05

# -- the ceiling: a constant JSON, served as ``serve`` serves its app ------------------------------

CEILING_BODY = b'{"id":"CH-bench-000000","new_release":""}'


async def ceiling_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The minimal ASGI app: reads the request body, answers a constant JSON."""
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
    more = True
    while more:
        message = await receive()
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


def serve_ceiling(port: int, log_level: str) -> None:
    """The ceiling's server process: uvicorn configured as ``serve_async`` configures it."""
    import uvicorn

    from release_coordinator.server.serve import GRACEFUL_SHUTDOWN, _listen

    # as ``release-coordinator serve`` configures logging (cli.main)
    logging.basicConfig(
        level=logging.getLevelName(log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sock = _listen(HOST, port)
    config = uvicorn.Config(
        ceiling_app,
        host=HOST,
        port=port,
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        server_header=False,
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (all its threads, those gone too), or of one of
    its threads."""
    where = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(where) as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server subprocess on 127.0.0.1 (stdout and stderr into a file)."""

    def __init__(
        self,
        label: str,
        command: list[str],
        cwd: Path,
        env: dict[str, str],
        *,
        profiled: bool = False,
    ) -> None:
        self.label = label
        #: SIGUSR1/SIGUSR2 switch its profiler on and off (see :func:`profiled_serve`).
        self.profiled = profiled
        self.port = free_port()
        self.log_path = cwd / f"{label.replace('/', '').replace(' ', '-')}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def wait_ready(self, path: str, patience: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + patience
        async with httpx.AsyncClient(base_url=self.base) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.label} exited: {self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(path)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.label} did not start: {self.tail()}")
                await asyncio.sleep(0.1)

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        if self.process.poll() is None:
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


async def register(port: int, queue: Iterator[tuple[str, bytes]]) -> None:
    """Polls for the children of ``queue`` one after another on one connection (the raw
    client: httpx would take longer than the server, see the module docstring)."""
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
            if head[9:12] != b"200" or json.loads(answer)["id"] != child_id:
                raise RuntimeError(f"registering {child_id}: {head[:12]!r} {answer[:300]!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def poll_all(port: int, queue: Iterator[tuple[str, bytes]], concurrency: int) -> None:
    await asyncio.gather(*(register(port, queue) for _ in range(concurrency)))


def idle_cpu(server: Server, seconds: float = 3.0) -> float:
    """The server's CPU use (share of one core) while nobody asks it anything."""
    before = cpu_seconds(server.process.pid)
    time.sleep(seconds)
    return (cpu_seconds(server.process.pid) - before) / seconds


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


def measure(
    server: Server, bodies: list[bytes], args: argparse.Namespace, seed: int, label: str
) -> Row:
    """One measurement: the client processes against ``server``; figures of the window."""
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
    if server.profiled:
        server.process.send_signal(signal.SIGUSR1)
    pid = server.process.pid
    cpu_before, loop_before = cpu_seconds(pid), cpu_seconds(pid, pid)
    log_before, t_before = server.log_size(), time.time()
    time.sleep(max(0.0, window_end - time.time()))
    cpu_after, loop_after = cpu_seconds(pid), cpu_seconds(pid, pid)
    log_after, t_after = server.log_size(), time.time()
    if server.profiled:
        server.process.send_signal(signal.SIGUSR2)
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
    elapsed = t_after - t_before
    return Row(
        label,
        {
            "rps": count / args.duration,
            "p50": ordered[count // 2] / 1e6,
            "p99": ordered[min(count - 1, int(count * 0.99))] / 1e6,
            "server_cpu": (cpu_after - cpu_before) / elapsed,
            "cpu_per_request": (cpu_after - cpu_before) / count * 1e6,
            # CPU of the server's other threads (the SQLite driver's, the thread pool's)
            "threads_per_request": max(0.0, cpu_after - cpu_before - (loop_after - loop_before))
            / count
            * 1e6,
            "client_cpu": sum(r["cpu"] for r in results) / args.duration,
            "offered": sum(r["offered"] for r in results) / count,
            "errors": sum(r["errors"] for r in results),
            "log_per_request": (log_after - log_before) / count,
        },
    )


HEADER = (
    f"{'':26} {'requests/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>10} "
    f"{'CPU/req':>8} {'threads':>8} {'client CPU':>10} {'offered':>7} {'errors':>6}"
)


def show(row: Row) -> None:
    print(
        f"{row.label:26} {row.rps:>10,.0f} {row.p50:>7.2f} {row.p99:>7.2f} "
        f"{row.server_cpu:>9.0%} {row.cpu_per_request:>6.0f}us {row.threads_per_request:>6.0f}us "
        f"{row.client_cpu:>9.0%} "
        f"{row.offered:>7.1%} {row.errors:>6}",
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


def implementations() -> str:
    import uvicorn

    def have(module: str) -> bool:
        try:
            __import__(module)
        except ImportError:
            return False
        return True

    loop = "uvloop" if have("uvloop") else "asyncio"
    http = "httptools" if have("httptools") else "h11"
    return f"uvicorn {uvicorn.__version__}, loop {loop}, HTTP {http}, one process, one worker"


def run(args: argparse.Namespace) -> int:
    levels = [level.strip() for level in args.log_level.split(",") if level.strip()]
    children = fleet(args.children, args.seed)
    bodies = [body for _, body in children]
    base_env = {k: v for k, v in os.environ.items() if k not in ("RC_DB", "RC_CALLBACK_TOKENS")}
    base_env["RC_OPERATOR_TOKENS"] = f"bench={OPERATOR_TOKEN}"
    base_env["PYTHONUNBUFFERED"] = "1"
    here = Path(__file__).resolve()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rc-http-poll-")))
        db_env: dict[str, str] = {}
        described = "SQLite file in the temporary working directory (serve's default)"
        if args.db == "postgres":
            db_env["RC_DB"] = stack.enter_context(postgres_schema())
            described = f"PostgreSQL, a schema of its own at {POSTGRES_URL}"
        elif args.db == "memory":
            db_env["RC_DB"] = "memory"
            described = "memory"
        elif args.db:
            db_env["RC_DB"] = args.db
            described = "given URL (RC_DB)"
        print(f"server : {implementations()}; store: {described}")
        print(
            f"client : {args.client_processes} process(es), {args.concurrency} keep-alive "
            f"connections, {'raw asyncio HTTP/1.1' if args.client == 'raw' else 'httpx'} client; "
            f"{args.warmup:g} s warm-up, then {args.duration:g} s measured, {args.rounds} round(s)"
        )
        print(
            f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
            f"python {sys.version.split()[0]}"
        )
        ceiling = Server(
            "ceiling",
            [sys.executable, str(here), "--serve-ceiling", "--log-level", levels[0]],
            folder,
            base_env,
        )
        stack.callback(ceiling.stop)
        asyncio.run(ceiling.wait_ready("/"))
        summary: dict[str, list[tuple[Row, Row]]] = {}
        profile = Path(args.profile).resolve() if args.profile else None
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
        for level in levels:
            command = [sys.executable]
            if profile is not None:
                command += [str(here), "--profiled-serve", str(profile), "--"]
            else:
                command += ["-m", "release_coordinator"]
            command += ["serve", "--log-level", level]
            poll = Server(
                f"poll-{level}", command, folder, {**base_env, **db_env}, profiled=bool(profile)
            )
            try:
                asyncio.run(poll.wait_ready("/openapi.json"))
                if poll.profiled:
                    poll.process.send_signal(signal.SIGUSR1)
                done = asyncio.run(
                    set_up(
                        poll, children, args.rollouts, args.rollout_share, args.setup_concurrency
                    )
                )
                if poll.profiled:
                    poll.process.send_signal(signal.SIGUSR2)
                print(f"\n/poll server at --log-level {level}: {done}")
                idle = idle_cpu(poll)
                # Children registered more than lost_after (60 s) ago count as lost until
                # they poll again: one more poll each, so that the fleet is live, as a fleet
                # polling steadily is.
                started = time.perf_counter()
                queue = iter(children)
                asyncio.run(poll_all(poll.port, queue, args.setup_concurrency))
                took = time.perf_counter() - started
                print(
                    f"  server CPU while idle: {idle:.0%} of a core; every child polled again "
                    f"in {took:.1f} s ({len(children) / took:,.0f}/s); then idle: "
                    f"{idle_cpu(poll):.0%}"
                )
                print(HEADER)
                pairs = []
                for round_ in range(args.rounds):
                    top = measure(
                        ceiling, bodies, args, args.seed + round_, "ceiling (constant JSON)"
                    )
                    show(top)
                    row = measure(poll, bodies, args, args.seed + round_, f"/poll (log {level})")
                    show(row)
                    pairs.append((top, row))
                    if level == "info":
                        print(f"{'':26} access log: {row.log_per_request:.0f} bytes per request")
                summary[level] = pairs
            finally:
                poll.stop()
            if profile is not None:
                print_profile("registering the children (each polls once)", [f"{profile}.0"], 15)
                windows = [f"{profile}.{n}" for n in range(1, args.rounds + 1)]
                print_profile("the measured /poll windows", windows, 30)
                profile = None  # the first level only
    print()
    print(f"ratio /poll / ceiling (requests/s, same round; target >= {TARGET_RATIO})")
    status = 0
    for level, pairs in summary.items():
        ratios = [row.rps / top.rps for top, row in pairs]
        cpu = [top.cpu_per_request / row.cpu_per_request for top, row in pairs]
        ratio = statistics.median(ratios)
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"  --log-level {level:8} {ratio:.2f} (rounds: {shown})  {verdict};  server CPU "
            f"per request, ceiling/poll: {statistics.median(cpu):.2f}"
        )
        bound = max(top.client_cpu for top, _ in pairs)
        if bound > 0.9:
            print(
                f"  (the client used {bound:.0%} of a core against the ceiling: the ceiling may "
                "be the client's; the CPU-per-request ratio does not depend on it)"
            )
        if args.profile:
            print("  (the /poll server ran under a profiler: these ratios are not its own)")
        elif ratio < TARGET_RATIO:
            status = 1
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument(
        "--rollout-share", type=float, default=0.1, help="share of the map each rollout targets"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--setup-concurrency", type=int, default=32)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="ceiling and /poll alternations")
    parser.add_argument(
        "--log-level",
        default="warning",
        help="serve's --log-level; several, comma-separated, are measured one after the other",
    )
    parser.add_argument("--db", default=None, help="memory | postgres | a database URL")
    parser.add_argument("--profile", metavar="FILE", help="run the /poll server under cProfile")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--profiled-serve", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("serve_argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profiled_serve:
        profiled_serve(args.profiled_serve, args.serve_argv)
        return
    if args.serve_ceiling:
        serve_ceiling(args.port, args.log_level.split(",")[0])
        return
    if args.concurrency < args.client_processes or args.client_processes < 1:
        parser.error("--concurrency must be at least --client-processes, which is at least 1")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
