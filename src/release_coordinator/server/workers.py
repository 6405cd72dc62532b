"""``serve --workers N``: several processes serving one socket over one PostgreSQL database.

The command's process is the *supervisor*: it binds the socket and prepares the database (so
that a wrong option or an unreachable database is said once, before anything starts), then
starts N worker processes (``multiprocessing``'s ``spawn``: a fresh interpreter each, given
the socket and the checked settings). Each worker is a whole server (both APIs, its own
Coordinator and RolloutManager, its own connections); the kernel hands each new connection to
one of them. What they share lives in the database:

- the Coordinator's releases are claimed with leases, so each release is driven by one worker
  (another takes it over when that one dies: ``--lease-seconds``);
- the RolloutManager's registrations, offers and child states are compare-and-sets on shared
  rows, so a child polling worker A and then worker B sees one state;
- the manager's periodic work (ticks: lost children, time-outs, barriers that time out,
  completion) runs in the one worker that holds the loop's lease (``rollout-manager-loop``).

A worker whose supervisor is gone (killed with SIGKILL, say) stops itself, as if it had been
sent SIGTERM: it never serves on alone. The supervisor restarts a worker that exits while the
server runs (a crash, a kill), unless
workers keep failing right after they start (then it stops them all: exit status 1); a
worker that stops cleanly (it was sent SIGTERM itself) is not replaced, and the supervisor
stops once none is left.
SIGTERM or SIGINT stops every worker (each lets its requests finish within the grace) and the
supervisor answers 0 when all of them stopped cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from typing import Any

from release_coordinator.server.servers import stop_on_signals

__all__ = ["FAILING_AT_START", "STOP_WITHIN", "WorkerEntry", "as_worker", "supervise"]

log = logging.getLogger("release_coordinator.server.serve")

#: What a worker process runs: ``entry(settings, sock, index)``, a module-level function (the
#: ``spawn`` start method pickles it by name).
WorkerEntry = Callable[[Any, socket.socket, int], None]

#: A worker that exits within this many seconds of its start failed at start; three such
#: failures in a row stop the server.
FAILING_AT_START = 10.0
#: Seconds a stopping worker gets (beyond the requests' grace) before it is killed.
STOP_WITHIN = 10.0


class _Worker:
    def __init__(self, index: int, process: BaseProcess) -> None:
        self.index = index
        self.process = process
        self.started = time.monotonic()


async def supervise(
    settings: Any,
    sock: socket.socket,
    workers: int,
    entry: WorkerEntry,
    *,
    grace: float,
) -> int:
    """Run ``workers`` processes of ``entry`` on ``sock`` until SIGTERM or SIGINT (see the
    module's text); the exit status."""
    context = multiprocessing.get_context("spawn")
    running: dict[int, _Worker] = {}
    failures = 0  # (none, if a start itself fails: that error is raised)

    def start(index: int) -> None:
        process = context.Process(
            target=entry, args=(settings, sock, index), name=f"rc-worker-{index}", daemon=False
        )
        process.start()
        running[index] = _Worker(index, process)
        log.info("worker %d started (pid %s)", index, process.pid)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:  # from a signal handler: wake the loop
        loop.call_soon_threadsafe(stopping.set)

    with stop_on_signals(stop):
        try:
            for index in range(1, workers + 1):
                start(index)
            failures = await _watch(running, stopping, start)
        finally:  # (a worker that could not be started, too: the others stop)
            clean = await _stop_all(list(running.values()), grace + STOP_WITHIN)
    log.info("stopped")
    return 0 if clean and failures < 3 else 1


async def _watch(
    running: dict[int, _Worker], stopping: asyncio.Event, start: Callable[[int], None]
) -> int:
    """Replace the workers that exit until ``stopping``; the failures at start in a row."""
    failures = 0
    while not stopping.is_set() and running:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.25)
        if stopping.is_set():
            break
        for index, worker in list(running.items()):
            if worker.process.is_alive():
                continue
            code = worker.process.exitcode
            if code == 0:  # stopped cleanly: told to stop (a signal), not replaced
                log.info("worker %d (pid %s) stopped", index, worker.process.pid)
                del running[index]
                continue
            quick = time.monotonic() - worker.started < FAILING_AT_START
            failures = failures + 1 if quick else 0
            if failures >= 3:
                log.error(
                    "worker %d (pid %s) exited with %s right after it started, three times "
                    "in a row: stopping (see the workers' log lines above)",
                    index,
                    worker.process.pid,
                    code,
                )
                stopping.set()
                break
            log.warning(
                "worker %d (pid %s) exited with %s; starting another",
                index,
                worker.process.pid,
                code,
            )
            start(index)
    return failures


async def _stop_all(workers: list[_Worker], within: float) -> bool:
    """SIGTERM to every worker, then wait; a worker still running after ``within`` seconds
    is killed. True when every worker exited with 0 (or of that SIGTERM)."""
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
    deadline = time.monotonic() + within
    while any(w.process.is_alive() for w in workers) and time.monotonic() < deadline:  # noqa: ASYNC110 - other processes
        await asyncio.sleep(0.05)
    for worker in workers:
        if worker.process.is_alive():
            log.warning("worker %d (pid %s) did not stop: killed", worker.index, worker.process.pid)
            worker.process.kill()
        worker.process.join(timeout=5)
    # A worker told to stop before it took the signals over (still starting) dies of SIGTERM:
    # that is the stop asked for, not a failure.
    return all(w.process.exitcode in (0, -signal.SIGTERM) for w in workers)


async def as_worker(serving: Awaitable[int], supervisor: int, *, every: float = 1.0) -> int:
    """Await ``serving`` (a worker's server) in a worker process of ``supervisor`` (its pid);
    should the supervisor die, the worker sends itself SIGTERM (its server stops as for any
    SIGTERM: the requests it holds finish)."""
    watch = asyncio.get_running_loop().create_task(_stop_when_orphaned(supervisor, every))
    try:
        return await serving
    finally:
        watch.cancel()


async def _stop_when_orphaned(supervisor: int, every: float) -> None:
    while os.getppid() == supervisor:  # noqa: ASYNC110 - another process's life, polled
        await asyncio.sleep(every)
    log.warning("the supervisor (pid %d) is gone: this worker stops", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
