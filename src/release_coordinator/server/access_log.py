"""One log line per request (:class:`AccessLog`, ASGI middleware): client, method, path
without its query string (made safe to log), status and duration; nothing when INFO is off.
It also hands every request's route template, status and time to a metrics observer, and
:class:`JsonFormatter` writes log records as one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from release_coordinator.logs import JsonFormatter

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ACCESS_LOGGER",
    "REQUEST_ID_HEADER",
    "UNMATCHED",
    "AccessLog",
    "JsonFormatter",
    "RequestObserver",
]

#: The logger of the one line per request.
ACCESS_LOGGER = "release_coordinator.access"
#: The header a request's id comes in (when sane) and is answered in.
REQUEST_ID_HEADER = "X-Request-ID"
#: The route of a request that no route matched.
UNMATCHED = "unmatched"
#: What a metrics observer gets per request: method, route template, status (None when the
#: app answered nothing), seconds.
RequestObserver = Callable[[str, str, "int | None", float], None]
_MAX_LOGGED_PATH = 1000
# Characters of a path logged as they are; anything else (controls, blanks, quotes, non-ASCII)
# is percent-encoded, so that a request cannot forge or break a log line.
_SAFE_PATH = "/!$&'()*+,;=:@-._~%"
_SANE_ID = re.compile(rb"[A-Za-z0-9._~:@/+=-]{1,128}")
_ID_HEADER = REQUEST_ID_HEADER.lower().encode("ascii")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


#: A path (or method) that percent-encoding would leave as it is: logged without encoding it.
_LOGGED_AS_IS = re.compile(r"[A-Za-z0-9/!$&'()*+,;=:@._~%-]{0,1000}")


def _shown_path(scope: Scope) -> str:
    """The request's path, never its query string (where secrets end up), made safe to log."""
    path = str(scope.get("root_path", "")) + str(scope.get("path", ""))
    if _LOGGED_AS_IS.fullmatch(path):
        return path  # (what quote() would answer, at a fraction of its cost)
    shown = urllib.parse.quote(path, safe=_SAFE_PATH, errors="backslashreplace")
    if len(shown) > _MAX_LOGGED_PATH:
        shown = shown[:_MAX_LOGGED_PATH] + "..."
    return shown


def _request_id(scope: Scope) -> str:
    """The request's ``X-Request-ID`` if it is sane (at most 128 of ``A-Z a-z 0-9 . _ ~ : @ /
    + = -``), else a new random id."""
    for name, value in scope.get("headers") or ():
        if name == _ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    return os.urandom(16).hex()


class AccessLog:
    """Pure ASGI middleware logging one INFO line per HTTP request to ``logger``:

    ``127.0.0.1:53411 "GET /releases" 200 1.4ms``

    (client address, method, path without the query string, status, duration). The record
    also carries them as ``client``, ``method``, ``path``, ``status`` and ``duration_ms``, and
    ``route`` (the template of the route that served it: ``/releases/{id}``; ``unmatched``) and
    ``request_id``: the request's ``X-Request-ID`` if sane, else a new one, answered in that
    header. No other header, and so no token, is looked at. A request whose app raised before
    answering is logged with status 500.

    ``log=False`` leaves the lines out; ``observer`` (a :data:`RequestObserver`: the metrics)
    gets every request's method, route template, status and seconds, logged or not.
    ``routes`` are the app's, whose exact paths name the requests that bypass the router (see
    :class:`~release_coordinator.server.serve.FastRoutes`).
    """

    def __init__(
        self,
        app: ASGIApp,
        logger: logging.Logger | str = ACCESS_LOGGER,
        *,
        log: bool = True,
        observer: RequestObserver | None = None,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.log = log
        self.observer = observer
        self.routes = routes
        self._exact: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        logged = scope["type"] == "http" and self.log and self.logger.isEnabledFor(logging.INFO)
        if not logged and (self.observer is None or scope["type"] != "http"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root = str(scope.get("root_path", ""))
        status: int | None = None
        request_id = _request_id(scope) if logged else ""
        answered_id = request_id.encode("ascii")

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if answered_id:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), (_ID_HEADER, answered_id)]
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
            seconds = time.perf_counter() - started
            route = self._template(scope, root)
            if self.observer is not None:
                self.observer(str(scope.get("method", "-")), route, status, seconds)
            if logged:
                self._log(scope, status, seconds * 1000.0, route, request_id)

    def _template(self, scope: Scope, root: str) -> str:
        """The template of the route that served the request (what Starlette's routers left
        in the scope, with the prefixes of the mounts it went through), or its path if it is
        one of the app's exact paths (a request that bypassed the router), else UNMATCHED."""
        route = scope.get("route")
        if route is not None:
            grown = str(scope.get("root_path", ""))[len(root) :]
            if hasattr(route, "routes"):  # a Mount: the rest of the path is its app's
                return grown + "/{path}"
            return grown + str(getattr(route, "path", ""))
        if self._exact is None:
            self._exact = frozenset(
                str(r.path)  # type: ignore[attr-defined]
                for r in self.routes
                if getattr(r, "methods", None) and not getattr(r, "param_convertors", True)
            )
        path = str(scope.get("path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        return path if path in self._exact else UNMATCHED

    def _log(
        self, scope: Scope, status: int | None, duration_ms: float, route: str, request_id: str
    ) -> None:
        method = str(scope.get("method", "-"))[:20]
        if not method.isalpha() or not method.isascii():
            method = urllib.parse.quote(method, safe="")
        path = _shown_path(scope)
        client = _client(scope)
        shown_status = "-" if status is None else str(status)
        # Made and handled as Logger.info would, less the look for the caller's frame (an
        # access line's caller is always this method): one per request adds up.
        record = self.logger.makeRecord(
            self.logger.name,
            logging.INFO,
            __file__,
            0,
            '%s "%s %s" %s %.1fms',
            (client, method, path, shown_status, duration_ms),
            None,
            "_log",
            {
                "client": client,
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request_id,
            },
        )
        self.logger.handle(record)
