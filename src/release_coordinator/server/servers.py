"""The HTTP servers ``release-coordinator serve`` runs its ASGI app under (``--server``).

::

    from release_coordinator.server import servers

    name = servers.check(None)  # "granian" when installed, else "uvicorn"
    clean = await servers.run(name, app, sock, log_level="info")

- **granian** (the default when it is installed; the ``server`` extra brings it): a Rust HTTP
  server, embedded in this process's event loop (``granian.server.embed``), HTTP/1.1 only.
- **uvicorn** (always there: the ``server`` extra's other half), with its asyncio loop and the
  HTTP implementation it finds.

Both serve the same app the same way: on a socket the caller bound (``serve``'s ``_listen``;
so port 0 is a port known before the server starts), with the app's lifespan (startup before
the first request, shutdown after the last), no access log of their own (the app's
:class:`~release_coordinator.server.access_log.AccessLog` writes one line per request) and the
command's logging configuration. SIGTERM or SIGINT stops either cleanly: no new connection,
open requests get :data:`GRACEFUL_SHUTDOWN` seconds to finish (then they are canceled), the
lifespan shuts down, and :func:`run` returns (the process exits 0 instead of dying of the
signal). :func:`run` answers whether the server started and stopped so: False when the app's
startup failed or the server could not run.

One process, one worker: a ``workers`` option would be one more argument of :func:`run` and
of each runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from release_coordinator.errors import ConfigurationError

__all__ = [
    "DEFAULT_BACKLOG",
    "GRACEFUL_SHUTDOWN",
    "SERVERS",
    "check",
    "default_server",
    "describe",
    "run",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

#: The values of ``--server``, the default first (when installed).
SERVERS = ("granian", "uvicorn")
#: Seconds open requests get to finish after SIGTERM before they are canceled.
GRACEFUL_SHUTDOWN = 10
#: Connections waiting to be accepted (uvicorn's default).
DEFAULT_BACKLOG = 2048
_EXTRA = "pip install 'release-coordinator[server]'"
# granian says so each time it starts embedded; nothing an operator can act on
_EMBEDDED_WARNING = "Embedded server is experimental!"


def installed(name: str) -> bool:
    """Whether the server ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None


def default_server() -> str:
    """``granian`` when it is installed, else ``uvicorn``."""
    return next((name for name in SERVERS if installed(name)), SERVERS[-1])


def describe(name: str) -> str:
    """``name``, its version and how it runs, for the log."""
    from importlib.metadata import version

    return f"{name} {version(name)}, HTTP/1.1, one process"


def check(name: str | None) -> str:
    """``name`` (None: :func:`default_server`) if it is a known, installed server; else
    ConfigurationError naming ``--server`` and the extra that brings it."""
    if name is None:
        return default_server()
    if name not in SERVERS:
        raise ConfigurationError(f"--server must be one of {', '.join(SERVERS)}, not {name!r}")
    if not installed(name):
        raise ConfigurationError(
            f"--server {name}: {name} is not installed (the server extra brings it: {_EXTRA})"
        )
    return name


async def run(
    name: str,
    app: ASGIApp,
    sock: socket.socket,
    *,
    log_level: str = "info",
    grace: float = GRACEFUL_SHUTDOWN,
) -> bool:
    """Serve ``app`` on ``sock`` (bound, not yet listening) under the server ``name`` until
    SIGTERM or SIGINT; True if it started and then stopped on a signal (or when asked), False
    if the app's startup failed or the server could not run. ``grace``: seconds open requests
    get after the signal. ``sock`` stays the caller's to close."""
    runner = _RUNNERS[check(name)]
    return await runner(app, sock, log_level, grace)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop`` (in the main thread only: elsewhere nothing changes),
    and nothing else: the command then closes its stores and exits 0 instead of dying of
    the signal. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def noted(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, noted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- uvicorn --------------------------------------------------------------------------------------


async def _run_uvicorn(app: ASGIApp, sock: socket.socket, log_level: str, grace: float) -> bool:
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,  # AccessLog writes the one line per request
        log_config=None,  # the command's logging configuration applies
        log_level=log_level,
        timeout_graceful_shutdown=max(1, math.ceil(grace)),
        server_header=False,
        backlog=DEFAULT_BACKLOG,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    # uvicorn stops on SIGINT/SIGTERM and, once stopped, raises the signal again for the
    # handler it found. The handler it finds is this one, which only asks it to stop (also
    # when the signal comes before uvicorn listens for it).
    with stop_on_signals(stop):
        try:
            await server.serve(sockets=[sock])
        except SystemExit as stopped:  # uvicorn's way to say the startup failed
            log.error("the server did not start (exit status %s)", stopped.code)
            return False
    return bool(server.started)


# -- granian --------------------------------------------------------------------------------------


class _Lifespan:
    """The ASGI lifespan protocol, driven from outside the server (granian runs the app
    without it: ``asginl``), as uvicorn drives it: startup before the first request, shutdown
    after the last."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failed = False
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = str(message["type"])
        failed = kind.endswith(".failed")
        if failed and message.get("message"):
            log.error("%s", message["message"])
        if kind.startswith("lifespan.startup."):
            self._failed = failed
            self._started.set()
        elif kind.startswith("lifespan.shutdown."):
            self._stopped.set()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as error:
            if not self._started.is_set():
                self._failed = True
                log.error("the application's startup failed", exc_info=error)
            elif not self._stopped.is_set():
                log.error("the application's shutdown failed", exc_info=error)
            if not isinstance(error, Exception):
                raise
        finally:
            self._started.set()
            self._stopped.set()

    async def startup(self) -> bool:
        """Whether the app started."""
        self._task = asyncio.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started.wait()
        if not self._failed:
            log.info("application startup complete")
        return not self._failed

    async def shutdown(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        log.info("application shutdown complete")


class _OpenRequests:
    """ASGI middleware keeping the tasks of the requests in progress (granian runs each in an
    asyncio task of its own), so that those still open when the grace ends can be canceled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if task is None:  # (not under asyncio's tasks: nothing to keep)
            await self.app(scope, receive, send)
            return
        self.tasks.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.tasks.discard(task)

    async def cancel_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        if self.tasks:
            log.warning(
                "canceling %d request(s) still open %gs after the stop", len(self.tasks), grace
            )
        for task in list(self.tasks):
            task.cancel()


def _granian_server(
    app: ASGIApp, sock: socket.socket, log_level: str, backlog: int
) -> Any:  # a granian.server.embed.Server
    """granian's embedded server over ``sock`` (which it duplicates), ``app`` without the
    lifespan, HTTP/1.1, the command's logging left as it is (only granian's own logger's
    level is set)."""
    from granian._granian import SocketHolder
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    class OnSocket(Server):
        def _init_shared_socket(self) -> None:
            # the socket serve bound (so that port 0 is known), not one of granian's own
            self._ssp = None
            held = SocketHolder(os.dup(sock.fileno()), False, backlog)  # type: ignore[call-arg]
            self._shd = held  # type: ignore[assignment]

    host, port = sock.getsockname()[:2]
    return OnSocket(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGINL,
        http=HTTPModes.http1,
        websockets=False,
        backlog=backlog,
        log_level=LogLevels(log_level),
        log_access=False,  # AccessLog writes the one line per request
        # incremental: granian only sets its own logger's level; its records go to the root
        # logger's handlers (text or JSON, as configured) like everyone's
        log_dictconfig={"version": 1, "incremental": True, "loggers": {}, "handlers": {}},
    )


class _NotTheEmbeddedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _EMBEDDED_WARNING


async def _run_granian(app: ASGIApp, sock: socket.socket, log_level: str, grace: float) -> bool:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:  # from a signal handler: wake the loop
        loop.call_soon_threadsafe(stopping.set)

    granian_log = logging.getLogger("_granian")
    quiet = _NotTheEmbeddedWarning()
    granian_log.addFilter(quiet)
    requests = _OpenRequests(app)
    lifespan = _Lifespan(app)
    try:
        with stop_on_signals(stop):
            if not await lifespan.startup():
                log.error("the server did not start: the application's startup failed")
                return False
            try:
                sock.listen(DEFAULT_BACKLOG)
                server = _granian_server(requests, sock, log_level, DEFAULT_BACKLOG)
                serving = asyncio.ensure_future(server.serve())
            except Exception:
                log.exception("the server did not start")
                await lifespan.shutdown()
                return False
            asked = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({serving, asked}, return_when=asyncio.FIRST_COMPLETED)
            clean = asked.done()
            asked.cancel()
            server.stop()  # no new connection; granian waits for the open requests
            deadline = asyncio.ensure_future(requests.cancel_after(grace))
            try:
                await serving
            except Exception:
                log.exception("the server failed")
                clean = False
            finally:
                deadline.cancel()
            if not clean:
                log.error("the server stopped unexpectedly")
            await lifespan.shutdown()
            return clean
    finally:
        granian_log.removeFilter(quiet)


_RUNNERS: dict[str, Callable[[ASGIApp, socket.socket, str, float], Awaitable[bool]]] = {
    "granian": _run_granian,
    "uvicorn": _run_uvicorn,
}
