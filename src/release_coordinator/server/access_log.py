"""One log line per request (:class:`AccessLog`, ASGI middleware): client, method, path
without its query string (made safe to log), status and duration; nothing when INFO is off."""

from __future__ import annotations

import logging
import time
import urllib.parse

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS_LOGGER", "AccessLog"]

#: The logger of the one line per request.
ACCESS_LOGGER = "release_coordinator.access"
_MAX_LOGGED_PATH = 1000
# Characters of a path logged as they are; anything else (controls, blanks, quotes, non-ASCII)
# is percent-encoded, so that a request cannot forge or break a log line.
_SAFE_PATH = "/!$&'()*+,;=:@-._~%"


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _shown_path(scope: Scope) -> str:
    """The request's path, never its query string (where secrets end up), made safe to log."""
    path = str(scope.get("root_path", "")) + str(scope.get("path", ""))
    shown = urllib.parse.quote(path, safe=_SAFE_PATH, errors="backslashreplace")
    if len(shown) > _MAX_LOGGED_PATH:
        shown = shown[:_MAX_LOGGED_PATH] + "..."
    return shown


class AccessLog:
    """Pure ASGI middleware logging one INFO line per HTTP request to ``logger``:

    ``127.0.0.1:53411 "GET /releases" 200 1.4ms``

    (client address, method, path without the query string, status, duration). The record
    also carries them as ``client``, ``method``, ``path``, ``status`` and ``duration_ms``.
    Headers, and so tokens, are never looked at. A request whose app raised before answering
    is logged with status 500.
    """

    def __init__(self, app: ASGIApp, logger: logging.Logger | str = ACCESS_LOGGER) -> None:
        self.app = app
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            failed = True
            raise
        finally:
            if status is None and failed:
                status = 500
            self._log(scope, status, (time.perf_counter() - started) * 1000.0)

    def _log(self, scope: Scope, status: int | None, duration_ms: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        method = urllib.parse.quote(str(scope.get("method", "-"))[:20], safe="")
        path = _shown_path(scope)
        client = _client(scope)
        shown_status = "-" if status is None else str(status)
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            client,
            method,
            path,
            shown_status,
            duration_ms,
            extra={
                "client": client,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
            },
        )
