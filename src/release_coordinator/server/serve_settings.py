"""The settings of ``release-coordinator serve``, checked before anything is opened: each
refusal is a ConfigurationError naming the option. :class:`ServeSettings` is what every
process of the server gets (a worker process too: it is picklable)."""

from __future__ import annotations

import math
import socket

import attrs

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.errors import ConfigurationError
from release_coordinator.rollout.geo import Area
from release_coordinator.server.tokens import ServeTokens
from release_coordinator.transports.http import HttpParent

__all__ = ["LOG_FORMATS", "ServeSettings", "check_workers"]

#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")


def check_workers(workers: int, db: str, parent: str | None) -> int:
    """``workers`` if it can work: one, or several over PostgreSQL (the database several
    processes share) without ``parent``; else ConfigurationError naming ``--workers``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"--workers must be a whole number of at least 1, not {workers!r}")
    if workers == 1:
        return 1
    if not db.startswith(("postgresql:", "postgresql+", "postgres:")):
        kind = "memory" if db == "memory" else db.split(":", 1)[0]
        raise ConfigurationError(
            f"--workers {workers} needs a database that several processes share: PostgreSQL "
            f"(--db postgresql://...), not {kind} (SQLite has one writing process, memory is "
            "one process's)"
        )
    if parent is not None:
        raise ConfigurationError(
            f"--workers {workers} cannot be a relay (--parent): a relay keeps what it relayed "
            "in its process; run it with one worker"
        )
    return workers


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0: any free port); ConfigurationError when
    that cannot be done."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on the connections of a TCP socket only
    # (without it, each answer on a kept-alive connection waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise ConfigurationError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def seconds_option(option: str, value: float) -> float:
    """``value`` if it is a positive, finite number of seconds; else ConfigurationError naming
    ``option``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{option} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{option} must be a positive number of seconds, not {value!r}")
    return float(value)


def attempts_option(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"--retry-attempts must be a whole number of at least 1 (1: no retry), not {value!r}"
        )
    return value


def check_relay(parent: str | None, relay_id: str, area: Area | None) -> None:
    if parent is None:
        if relay_id:
            raise ConfigurationError("--relay-id needs --parent (it is the id at the parent)")
        if area is not None:
            raise ConfigurationError("--area needs --parent (it is the area reported to it)")
        return
    if not relay_id.isprintable() or relay_id.strip() != relay_id or len(relay_id) > 256:
        raise ConfigurationError(
            "--relay-id must be printable text of at most 256 characters, without blanks around it"
        )


def shown_url(url: str) -> str:
    """``url`` as it may be logged: without a user, password, query or fragment."""
    import httpx

    return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))


def parent_link(parent: str | None, token: str | None) -> HttpParent | None:
    """The relay's link to ``parent`` (None without one); ConfigurationError naming
    ``--parent`` for a URL that is not an http(s) base URL."""
    if parent is None:
        return None
    try:
        return HttpParent(parent, token=token)
    except ConfigurationError as error:
        raise ConfigurationError(f"--parent: {error.message}") from None


@attrs.frozen
class ServeSettings:
    """What :func:`serve_async` was asked to do, checked: what each worker process gets."""

    db: str
    tokens: ServeTokens
    allow_anonymous: bool
    child_tokens: bool
    log_level: str
    log_format: str
    tick_interval: float
    owner: str | None
    config: CoordinatorConfig
    lost_after: float
    lease_seconds: float
    parent: str | None
    relay_id: str
    area: Area | None
    metrics_public: bool
    server: str
    #: Seconds between two rounds of this process's webhook dispatcher (0: none here).
    webhook_interval: float = 1.0
