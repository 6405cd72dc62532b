"""Task services over HTTP, with httpx.

One :class:`httpx.AsyncClient` (connection pooling, HTTP keep-alive) serves every task service;
each request goes to the service's own base URL. httpx's exceptions never leave this module:
they become the library's transport errors (see :mod:`.base`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from release_coordinator import __version__
from release_coordinator.errors import (
    ConfigurationError,
    MalformedAnswerError,
    TransportError,
    ValidationError,
)
from release_coordinator.models import TaskService
from release_coordinator.transports._httpx import exchange
from release_coordinator.transports.base import TaskServiceTransport
from release_coordinator.wire import (
    ServiceStatus,
    TaskAnswer,
    TaskRequest,
    decode_answer,
    decode_status,
)

__all__ = ["USER_AGENT", "HttpTransport"]

USER_AGENT = f"release-coordinator/{__version__}"

#: Largest answer body read from a task service.
MAX_ANSWER_BYTES = 1024 * 1024

TokenSource = str | Callable[[TaskService], str | None] | None


def _is_header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable()


class HttpTransport(TaskServiceTransport):
    """Reaches task services at their ``http(s)://`` base URLs.

    ``token`` is a bearer token for every service, or a callable giving one per service (or
    ``None`` for no ``Authorization`` header). ``timeout`` bounds each request (seconds).
    ``client`` lets a host supply its own configured ``httpx.AsyncClient`` (the transport then
    does not close it); ``transport`` is passed to the client it builds (for example
    ``httpx.ASGITransport(app)`` to reach an ASGI app in process).
    """

    def __init__(
        self,
        *,
        token: TokenSource = None,
        timeout: float = 10.0,
        user_agent: str = USER_AGENT,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 200,
    ) -> None:
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        if isinstance(token, str) and not _is_header_safe(token):
            raise ConfigurationError("the bearer token must be printable ASCII")
        self._token = token
        self._user_agent = user_agent
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
        )

    def _headers(self, service: TaskService) -> dict[str, str]:
        headers = {
            "User-Agent": self._user_agent,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        token = self._token(service) if callable(self._token) else self._token
        if token:
            if not _is_header_safe(token):
                raise TransportError(
                    f"the token for task service {service.name!r} is not printable ASCII",
                    peer=service.url,
                )
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def check_url(self, url: str) -> str | None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as error:
            return f"{url!r} is not a URL: {error}"
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return f"{url!r} is not an http(s) base URL"
        return None

    def _url(self, service: TaskService, path: str) -> str:
        problem = self.check_url(service.url)
        if problem is not None:  # an answer of sorts: retrying cannot help
            raise TransportError(f"task service {service.name!r}: {problem}", peer=service.url)
        return service.url.rstrip("/") + path

    async def _request(
        self, method: str, service: TaskService, path: str, body: Any, what: str
    ) -> Any:
        url = self._url(service, path)
        peer = service.url
        headers = self._headers(service)
        # Encoded here, ASCII-escaped: any str (even a lone surrogate) makes valid JSON text.
        content = None if body is None else json.dumps(body, ensure_ascii=True).encode()
        raw = await exchange(
            self._client,
            method,
            url,
            peer=peer,
            what=what,
            headers=headers,
            content=content,
            limit=MAX_ANSWER_BYTES,
        )
        text = raw.decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise MalformedAnswerError(
                f"{peer} answered {what} with a body that is not JSON",
                peer=peer,
                status_code=200,
                body=text,
            ) from None

    async def send(self, service: TaskService, request: TaskRequest) -> TaskAnswer:
        what = f"{request.action.value!r}"
        body = await self._request("POST", service, "/tasks", request.to_json(), what)
        try:
            return decode_answer(body)
        except ValidationError as error:
            raise MalformedAnswerError(
                f"{service.url} answered {what} with a malformed body: {error.message}",
                peer=service.url,
                status_code=200,
                body=json.dumps(body)[:500],
            ) from None

    async def status(self, service: TaskService) -> ServiceStatus:
        body = await self._request("GET", service, "/status", None, "GET /status")
        try:
            return decode_status(body)
        except ValidationError as error:
            raise MalformedAnswerError(
                f"{service.url} answered GET /status with a malformed body: {error.message}",
                peer=service.url,
                status_code=200,
            ) from None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
