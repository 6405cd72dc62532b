"""One process serving the Coordinator's API and a RolloutManager's: ``release-coordinator serve``.

::

    from release_coordinator.server.serve import service_app

    app = service_app(coordinator, manager, operator_tokens={"ops": os.environ["RC_OPS"]})
    # one Starlette app: coordinator_app's routes and rollout_app's, both lifespans

- :func:`service_app` builds ONE ASGI app from :func:`~release_coordinator.server.
  coordinator_app.coordinator_app` and :func:`~release_coordinator.server.rollout_app.
  rollout_app`: their routes side by side (their paths do not clash, which is checked; the
  one path both serve, ``GET /openapi.json``, answers :func:`~release_coordinator.server.
  openapi.combined_openapi`, one document for both), the startup of both (the coordinator
  starts; the manager loads its store and ticks) and the shutdown of both, in reverse order;
  and :class:`~release_coordinator.server.access_log.AccessLog`, one log line per request.
- :func:`serve` (and :func:`serve_async`) is the command: it opens the stores (a SQLite file in
  the working directory by default, a PostgreSQL URL, or ``memory``), builds a Coordinator
  over :class:`~release_coordinator.transports.http.HttpTransport` and a RolloutManager, runs
  an HTTP server (``server``: granian or uvicorn, see :mod:`~release_coordinator.server.
  servers`) until SIGTERM or SIGINT, lets both lifespans shut down, closes the stores, and
  answers the exit status (0 after a signal). With ``parent`` (``--parent URL``) the manager
  is a relay: a :class:`~release_coordinator.rollout.relay.Relay` under
  :class:`~release_coordinator.transports.http.HttpParent` polls the parent at every tick,
  adopts its releases, serves them to its own children and reports upward.

**Tokens come from the environment** (``RC_OPERATOR_TOKENS``, ``RC_CALLBACK_TOKENS``,
``RC_TASK_SERVICE_TOKEN``, ``RC_PARENT_TOKEN``: see :mod:`~release_coordinator.server.tokens`),
never from the command line (where ``ps`` shows them), and are never logged; ``RC_DB`` is the
default of ``--db`` (a password stays out of the process list).
Without an operator token the command refuses to start, unless ``--allow-anonymous``.

Needs the ``server`` extra (Starlette, granian, uvicorn) and, for a database, the ``sql`` or
``postgres`` extra. ``import release_coordinator`` does not import this module.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import socket
from collections.abc import (
    Callable,
    Coroutine,
)
from typing import Any, ParamSpec, TypeVar

import attrs

from release_coordinator.coordinator.config import CoordinatorConfig, RetryPolicy
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.models import new_id
from release_coordinator.errors import ConfigurationError, ReleaseCoordinatorError
from release_coordinator.logs import configure_logging
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.relay import Relay
from release_coordinator.server import servers
from release_coordinator.server.serve_settings import (
    LOG_FORMATS,
    ServeSettings,
    attempts_option,
    check_relay,
    check_workers,
    listen_socket,
    parent_link,
    seconds_option,
    shown_url,
)
from release_coordinator.server.servers import GRACEFUL_SHUTDOWN
from release_coordinator.server.service_app import DEFAULT_TICK_INTERVAL, FastRoutes, service_app
from release_coordinator.server.tokens import ENV_OPERATOR_TOKENS, ServeTokens, tokens_from_env
from release_coordinator.server.workers import as_worker, supervise
from release_coordinator.storage import DEFAULT_DB
from release_coordinator.storage.base import CoordinatorStore
from release_coordinator.storage.memory import MemoryStore
from release_coordinator.storage.memory_rollout import MemoryRolloutStore
from release_coordinator.storage.rollout_base import RolloutStore
from release_coordinator.transports.http import HttpTransport

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LOST_AFTER",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_TICK_INTERVAL",
    "ENV_DB",
    "GRACEFUL_SHUTDOWN",
    "LOG_LEVELS",
    "FastRoutes",
    "serve",
    "serve_async",
    "service_app",
]

log = logging.getLogger(__name__)

#: The default of ``--db``.
ENV_DB = "RC_DB"
#: Where ``serve`` listens by default: loopback only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: The values of ``--log-level``.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
#: ``--poll-interval``: the Coordinator's (``CoordinatorConfig.poll_interval``).
DEFAULT_POLL_INTERVAL = CoordinatorConfig().poll_interval
#: ``--retry-attempts``: the Coordinator's (``RetryPolicy.attempts``; 1 means no retry).
DEFAULT_RETRY_ATTEMPTS = RetryPolicy().attempts
#: ``--lost-after``: the RolloutManager's ``lost_after`` (seconds).
DEFAULT_LOST_AFTER = 60.0
#: ``--lease-seconds``: how long a process's hold on its work lasts without renewal.
DEFAULT_LEASE_SECONDS = 15.0


# -- the command ----------------------------------------------------------------------------------


async def _open_stores(db: str) -> tuple[CoordinatorStore, RolloutStore, str]:
    """The coordinator's store, the manager's, and how to describe them. Over a database both
    share one engine (one connection pool, and on SQLite one writer lock)."""
    if db == "memory":
        return MemoryStore(), MemoryRolloutStore(), "in memory (nothing is kept after a stop)"
    try:
        from release_coordinator.storage.sql import SQLRolloutStore, SQLStore
    except ImportError as error:
        raise ConfigurationError(f"--db {db.split(':', 1)[0]}:...: {error}") from None
    store = await SQLStore.connect(db)
    try:
        rollouts = SQLRolloutStore.over(store)
    except BaseException:
        await store.close()
        raise
    return store, rollouts, store.url


async def _close(what: str, thing: object, method: str = "close") -> None:
    closing = getattr(thing, method, None)
    if closing is None:  # e.g. a rollout store without a close()
        return
    try:
        await closing()
    except Exception:
        log.exception("closing the %s failed", what)


async def serve_async(
    *,
    db: str = DEFAULT_DB,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tokens: ServeTokens | None = None,
    allow_anonymous: bool = False,
    child_tokens: bool = False,
    log_level: str = "info",
    log_format: str = "text",
    tick_interval: float = DEFAULT_TICK_INTERVAL,
    owner: str | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
    lost_after: float = DEFAULT_LOST_AFTER,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    parent: str | None = None,
    relay_id: str = "",
    area: Area | None = None,
    metrics_public: bool = False,
    server: str | None = None,
    workers: int = 1,
    webhook_interval: float = 1.0,
) -> int:
    """Serve both APIs on ``host:port`` until SIGTERM or SIGINT; the exit status (0 after a
    signal, 1 when the server could not start).

    ``db`` is ``memory`` or a database URL (a SQLite file in the working directory by
    default); ``tokens`` default to :func:`tokens_from_env`;
    ``owner`` names the coordinator in its leases (a random id by default); ``poll_interval``
    and ``retry_attempts`` are its ``CoordinatorConfig.poll_interval`` and ``RetryPolicy.
    attempts``; ``lost_after`` is the manager's; ``tick_interval``, the seconds between two
    ticks of it; ``lease_seconds``, how long a process's hold on its work lasts without
    renewal (the coordinator's releases, the manager's background loop): another process
    takes the work over that long after one dies. ``parent`` (an ``http(s)://`` base URL)
    makes the manager a relay that polls
    the parent at every tick, sending ``tokens.parent`` if set, as ``relay_id`` (empty: the id
    the parent assigns), reporting ``area`` (its own) or else its children's union.
    ``server`` is the HTTP server, one of :data:`~release_coordinator.server.servers.SERVERS`
    (None: granian when it is installed, else uvicorn). ``workers`` > 1 serves from that many
    processes sharing the socket and a PostgreSQL database (see :mod:`~release_coordinator.
    server.workers`); ``log_format`` (``text`` or ``json``) is how they log.
    ``webhook_interval`` is the seconds between two rounds of the webhook dispatcher each
    process runs (0: none; another process of the database delivers the webhooks).

    Refused with ConfigurationError naming the option, before anything is opened: no operator
    token without ``allow_anonymous``, a setting that cannot work, relay options without
    ``parent``, a ``parent`` that is not an http(s) URL, an address that cannot be listened
    on, a server that is not installed, ``workers`` > 1 over a database only one process can
    use, or with ``parent``. A store that cannot be opened raises its StorageError.
    """
    if log_level not in LOG_LEVELS:
        raise ConfigurationError(f"the log level must be one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(f"the log format must be one of {', '.join(LOG_FORMATS)}")
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"the port must be within 0..65535, not {port}")
    worker_count = check_workers(workers, db, parent)
    lease_seconds = seconds_option("--lease-seconds", lease_seconds)
    if lease_seconds < 2 * tick_interval:
        raise ConfigurationError(
            f"--lease-seconds ({lease_seconds:g}) must be at least twice --tick-interval "
            f"({tick_interval:g}): a lease is renewed once a round"
        )
    config = CoordinatorConfig(
        poll_interval=seconds_option("--poll-interval", poll_interval),
        retry=attrs.evolve(CoordinatorConfig().retry, attempts=attempts_option(retry_attempts)),
        lease_seconds=lease_seconds,
    )
    check_relay(parent, relay_id, area)
    tokens = tokens_from_env() if tokens is None else tokens
    if not tokens.operators and not allow_anonymous:
        raise ConfigurationError(
            f"no operator token: set {ENV_OPERATOR_TOKENS} (tok1,tok2 or name=tok,...), "
            "or pass --allow-anonymous to serve without tokens (tests and trusted networks only)"
        )
    parent_link(parent, tokens.parent)  # (checked here; each process opens its own)
    settings = ServeSettings(
        db=db,
        tokens=tokens,
        allow_anonymous=allow_anonymous,
        child_tokens=child_tokens,
        log_level=log_level,
        log_format=log_format,
        tick_interval=seconds_option("--tick-interval", tick_interval),
        owner=owner,
        config=config,
        lost_after=seconds_option("--lost-after", lost_after),
        lease_seconds=lease_seconds,
        parent=parent,
        relay_id=relay_id,
        area=area,
        metrics_public=metrics_public,
        server=servers.check(server),
        webhook_interval=_webhook_interval(webhook_interval),
    )
    sock = listen_socket(host, port)
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        if worker_count == 1:
            return await serve_on(settings, sock, f"http://{shown_host}:{bound_port}")
        await _prepare_database(db)  # (its errors here, before any worker starts)
        sock.listen(servers.DEFAULT_BACKLOG)  # (connections wait for the workers, not refused)
        log.info("listening on http://%s:%d", shown_host, bound_port)
        return await supervise(settings, sock, worker_count, _worker_entry, grace=GRACEFUL_SHUTDOWN)
    finally:
        sock.close()


def _webhook_interval(seconds: float) -> float:
    if seconds == 0:
        return 0.0
    return seconds_option("--webhook-interval", seconds)


async def _prepare_database(db: str) -> None:
    """Open the database once (creating or checking its schema) and close it again."""
    store, rollout_store, _described = await _open_stores(db)
    await _close("rollout store", rollout_store)
    await _close("store", store)


async def serve_on(
    settings: ServeSettings, sock: socket.socket, listening: str = "", worker: str = ""
) -> int:
    """Serve ``settings`` on ``sock`` (bound) in this process until SIGTERM or SIGINT; the
    exit status. ``listening`` is the address to announce (none for a worker, whose
    supervisor announces it); ``worker`` names this process among several (its owner in the
    leases), "" for the only one."""
    s = settings
    link = parent_link(s.parent, s.tokens.parent)
    owner = f"{s.owner or new_id('SV')}-{worker}" if worker else s.owner
    try:
        store, rollout_store, described = await _open_stores(s.db)
        transport: Any = None
        coordinator: Coordinator | None = None
        try:
            transport = HttpTransport(token=s.tokens.task_service)
            coordinator = Coordinator(store, transport, config=s.config, owner=owner)
            # The app's startup loads the manager from its store (RolloutManager.load) before it
            # serves the first request, and ticks it from then on (a relay: runs the relay, which
            # polls the parent and ticks the manager).
            # The loop's lease is this process's (its pid in the name): two live processes
            # given one --owner never both hold it; a restarted one waits for it to run out.
            manager = RolloutManager(
                rollout_store,
                lost_after=s.lost_after,
                owner=f"{owner or 'serve'}@{os.getpid()}",
                lease_seconds=s.lease_seconds,
            )
            relay = None
            if link is not None:
                relay = Relay(
                    manager,
                    link,
                    relay_id=s.relay_id,
                    area=s.area,
                    interval=s.tick_interval,
                    own_area=s.area is not None,
                )
            app = service_app(
                coordinator,
                manager,
                operator_tokens=s.tokens.operator_tokens(),
                callback_tokens=s.tokens.callback_tokens(),
                allow_anonymous=s.allow_anonymous,
                child_tokens=s.child_tokens,
                tick_interval=s.tick_interval,
                relay=relay,
                metrics_public=s.metrics_public,
                webhook_interval=s.webhook_interval or None,
            )
            # This process is ours: what lives as long as the server (stores, indexes, children)
            # is moved out of the collector's sight, and young collections run less often. A busy
            # poll path allocates many short-lived objects; default thresholds made full
            # collections of the whole heap the long tail of its latency.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
            if not s.tokens.operators and not worker:
                log.warning(
                    "serving without operator tokens (--allow-anonymous): anyone may operate"
                )
            if worker:
                log.info("worker %s (pid %d): store %s", owner, os.getpid(), described)
            else:
                log.info(
                    "store: %s; operator tokens: %d; callback tokens: %d; child tokens: %s",
                    described,
                    len(s.tokens.operators),
                    len(s.tokens.callbacks),
                    "on" if s.child_tokens else "off",
                )
                log.info(
                    "coordinator: poll interval %gs, %d attempts; manager: lost after %gs, "
                    "ticked every %gs",
                    s.config.poll_interval,
                    s.config.retry.attempts,
                    s.lost_after,
                    s.tick_interval,
                )
            if link is not None:
                log.info(
                    "relay under %s as %s; area: %s; parent token: %s",
                    shown_url(link.base_url),
                    s.relay_id or "(the id the parent assigns)",
                    "its own (--area)" if s.area is not None else "the union of its children's",
                    "set" if s.tokens.parent else "none",
                )
            if listening:
                log.info("server: %s", servers.describe(s.server))
                log.info("listening on %s", listening)
            clean = await servers.run(
                s.server, app, sock, log_level=s.log_level, grace=GRACEFUL_SHUTDOWN
            )
            return 0 if clean else 1
        finally:
            if coordinator is not None:  # normally closed by the app's shutdown already
                await _close("coordinator", coordinator)
            if transport is not None:
                await _close("transport", transport, "aclose")
            await _close("rollout store", rollout_store)
            await _close("store", store)
            log.info("stopped")
    finally:
        if link is not None:
            await _close("parent link", link, "aclose")


def _worker_entry(settings: ServeSettings, sock: socket.socket, index: int) -> None:
    """A worker process of ``serve --workers N`` (:mod:`~release_coordinator.server.workers`):
    it logs as the command does and serves ``settings`` on the shared ``sock``."""
    configure_logging(logging.getLevelName(settings.log_level.upper()), settings.log_format)
    if settings.log_level != "debug":
        for name in ("httpx", "httpcore"):  # (as the command sets them)
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        status = asyncio.run(as_worker(serve_on(settings, sock, worker=f"w{index}"), os.getppid()))
    except ReleaseCoordinatorError as error:  # (a store it cannot open, say): one line
        log.error("worker %d did not start: %s", index, error.message)
        status = 1
    except KeyboardInterrupt:  # (SIGINT before the server took the signals over)
        status = 0
    raise SystemExit(status)


def _blocking(function: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, _T]:
    """``function`` run in a new event loop, with its signature (one list of options)."""

    @functools.wraps(function)
    def blocking(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return asyncio.run(function(*args, **kwargs))

    blocking.__doc__ = f""":func:`{function.__name__}` in a new event loop (the
    ``release-coordinator serve`` command): the same options, the same exit status."""
    return blocking


serve = _blocking(serve_async)
