"""Both seams over HTTP, with httpx: task services (:class:`HttpTransport`) and a parent
manager (:class:`HttpParent`).

One :class:`httpx.AsyncClient` (connection pooling, HTTP keep-alive) serves every task service;
each request goes to the service's own base URL. httpx's exceptions never leave this module:
they become the library's transport errors (see :mod:`.base`).

:class:`HttpParent` is a :class:`~release_coordinator.transports.base.ParentLink` (what a
:class:`~release_coordinator.rollout.relay.Relay` or a
:class:`~release_coordinator.rollout.kit.SimulatedLeaf` talks to) that reaches the parent's
``rollout_app`` (or any server of the child protocol) at a base URL::

    async with HttpParent("https://parent.example.org/edge") as parent:
        relay = Relay(RolloutManager(), parent, relay_id="berlin")
        await relay.run()

Its errors: connection refused, reset or dropped: ``PeerUnreachableError``; no answer in time:
``PeerTimeoutError``; a 502/504: ``BadGatewayError`` (all transient: try again later); any other
answer that is not a 200: ``PeerAnswerError`` with its ``status_code``; a 200 whose body breaks
the protocol (not JSON, a missing or mistyped field, an archive that is not a zip, an answer too
large): ``MalformedAnswerError``. When the parent issues child tokens, the token of the first
poll's answer is kept (:attr:`HttpParent.token`) and sent with every later request; it is never
logged or shown in an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from release_coordinator._version import __version__
from release_coordinator.coordinator.models import TaskService
from release_coordinator.coordinator.wire import (
    ServiceStatus,
    TaskAnswer,
    TaskRequest,
    decode_answer,
    decode_status,
)
from release_coordinator.errors import (
    ConfigurationError,
    MalformedAnswerError,
    TransportError,
    ValidationError,
)
from release_coordinator.rollout.archive import ArchiveLimits
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer
from release_coordinator.transports._httpx import exchange, url_shown
from release_coordinator.transports.base import ParentLink, TaskServiceTransport

__all__ = ["USER_AGENT", "HttpParent", "HttpTransport"]

USER_AGENT = f"release-coordinator/{__version__}"

_T = TypeVar("_T")

#: Largest answer body read from a task service.
MAX_ANSWER_BYTES = 1024 * 1024

TokenSource = str | Callable[[TaskService], str | None] | None


def _is_header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _is_token_safe(token: str) -> bool:
    """A child token as a parent issues it: header-safe and without spaces."""
    return _is_header_safe(token) and " " not in token


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
                    peer=url_shown(service.url),
                )
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def check_url(self, url: str) -> str | None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as error:
            return f"{url_shown(url)!r} is not a URL: {error}"
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return f"{url_shown(url)!r} is not an http(s) base URL"
        return None

    def _url(self, service: TaskService, path: str) -> str:
        problem = self.check_url(service.url)
        if problem is not None:  # an answer of sorts: retrying cannot help
            raise TransportError(
                f"task service {service.name!r}: {problem}", peer=url_shown(service.url)
            )
        return service.url.rstrip("/") + path

    async def _request(
        self, method: str, service: TaskService, path: str, body: Any, what: str
    ) -> Any:
        url = self._url(service, path)
        peer = url_shown(service.url)  # (in messages and events: never its password)
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

    async def _decoded(
        self,
        method: str,
        service: TaskService,
        path: str,
        body: Any,
        what: str,
        decode: Callable[[Any], _T],
        *,
        show_body: bool,
    ) -> _T:
        """``decode`` of the service's JSON answer; an answer it refuses is the service's
        MalformedAnswerError (with the start of the answer when ``show_body``)."""
        answer = await self._request(method, service, path, body, what)
        try:
            return decode(answer)
        except ValidationError as error:
            raise MalformedAnswerError(
                f"{url_shown(service.url)} answered {what} with a malformed body: {error.message}",
                peer=url_shown(service.url),
                status_code=200,
                body=json.dumps(answer)[:500] if show_body else "",
            ) from None

    async def send(self, service: TaskService, request: TaskRequest) -> TaskAnswer:
        what = f"{request.action.value!r}"
        return await self._decoded(
            "POST", service, "/tasks", request.to_json(), what, decode_answer, show_body=True
        )

    async def status(self, service: TaskService) -> ServiceStatus:
        return await self._decoded(
            "GET", service, "/status", None, "GET /status", decode_status, show_body=False
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class HttpParent(ParentLink):
    """A parent manager at ``base_url`` (``http(s)://host[/prefix]``, where its child protocol
    is served).

    ``token``: a bearer token to send (the parent's child tokens); one issued by the parent at
    the first poll replaces it. ``timeout`` bounds each request (seconds). ``transport`` is
    passed to the client built here (``httpx.ASGITransport(app)`` reaches an app in process);
    ``client`` lets a host supply its own ``httpx.AsyncClient`` (not closed here).
    ``max_archive_bytes`` bounds the function archive read (the default archive limit).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        user_agent: str = USER_AGENT,
        max_archive_bytes: int = ArchiveLimits().max_archive_bytes,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError, ValueError) as error:
            raise ConfigurationError(f"{base_url!r} is not a URL: {error}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(f"{base_url!r} is not an http(s) base URL")
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        if token is not None and not _is_token_safe(token):
            raise ConfigurationError("the token must be printable ASCII without blanks")
        if max_archive_bytes < 1:
            raise ConfigurationError("max_archive_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self._user_agent = user_agent
        self._max_archive = max_archive_bytes
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False
        )

    def __repr__(self) -> str:  # never the token
        return f"HttpParent({self.base_url!r}, token={'set' if self.token else 'none'})"

    async def __aenter__(self) -> HttpParent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (of a client built here). Idempotent."""
        if self._owns_client:
            await self._client.aclose()

    # -- HTTP ---------------------------------------------------------------------------------
    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, "Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        accept: str = "application/json",
        limit: int = MAX_ANSWER_BYTES,
    ) -> bytes:
        """The body of a 200 answer; every failure as a TransportError (module docstring)."""
        peer = self.base_url
        headers = self._headers(accept)
        content = None
        if body is not None:
            try:
                content = json.dumps(body, ensure_ascii=True, allow_nan=False).encode("ascii")
            except (TypeError, ValueError, RecursionError) as error:
                raise TransportError(
                    f"{what}: the request cannot be written as JSON ({type(error).__name__})",
                    peer=peer,
                ) from None
            headers["Content-Type"] = "application/json"
        return await exchange(
            self._client,
            method,
            peer + path,
            peer=peer,
            what=what,
            headers=headers,
            content=content,
            params=params,
            limit=limit,
        )

    def _malformed(self, what: str, why: str, raw: bytes = b"") -> MalformedAnswerError:
        return MalformedAnswerError(
            f"{self.base_url} answered {what} with a malformed body: {why}",
            peer=self.base_url,
            status_code=200,
            body=raw[:500].decode("utf-8", errors="replace"),
        )

    def _object(self, what: str, raw: bytes) -> dict[str, Any]:
        """The JSON object an answer's body holds; MalformedAnswerError if it holds none."""
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise self._malformed(what, "not JSON", raw) from None
        if not isinstance(value, dict):
            raise self._malformed(what, "not a JSON object", raw)
        return value

    async def _json_object(self, method: str, path: str, what: str, body: Any) -> dict[str, Any]:
        return self._object(what, await self._request(method, path, what, body=body))

    # -- the child protocol ---------------------------------------------------------------------
    async def poll(
        self, child_id: str, area: dict[str, Any], number_of_children: int
    ) -> PollAnswer:
        what = "POST /poll"
        body = {"id": child_id, "geographic_area": area, "number_of_children": number_of_children}
        answer = await self._json_object("POST", "/poll", what, body)
        new_id = answer.get("id")
        offer = answer.get("new_release", "")
        target = answer.get("target_area")
        token = answer.get("token")
        aborted = answer.get("aborted", [])
        if not isinstance(new_id, str) or not new_id:
            raise self._malformed(what, "'id' is not a non-empty string")
        if offer is None:
            offer = ""
        if not isinstance(offer, str):
            raise self._malformed(what, "'new_release' is not a string")
        if target is not None and not isinstance(target, dict):
            raise self._malformed(what, "'target_area' is not a GeoJSON object")
        if not isinstance(aborted, list) or not all(isinstance(a, str) for a in aborted):
            raise self._malformed(what, "'aborted' is not a list of release ids")
        if token is not None:
            if not isinstance(token, str) or not _is_token_safe(token) or not token:
                raise self._malformed(what, "'token' is not a token")
            self.token = token
        hint = answer.get("next_poll")  # advisory: a hint that is not a count is ignored
        if isinstance(hint, bool) or not isinstance(hint, int) or hint < 1:
            hint = None
        return PollAnswer(new_id, offer, target, tuple(aborted), hint)

    async def get_release(self, child_id: str, release_id: str) -> str:
        what = "GET /release"
        raw = await self._request(
            "GET",
            "/release",
            what,
            params={"childID": child_id, "releaseID": release_id},
            accept="text/plain, application/yaml, */*",
        )
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._malformed(what, "the strategy is not UTF-8 text") from None

    async def get_functions(self, release_id: str, child_id: str = "") -> bytes:
        what = "GET /release/functions"
        raw = await self._request(
            "GET",
            "/release/functions/" + quote(release_id, safe=""),
            what,
            params={"childID": child_id} if child_id else None,
            accept="application/zip",
            limit=self._max_archive,
        )
        if not raw.startswith(b"PK"):
            raise self._malformed(what, "not a zip archive")
        return raw

    async def submit_result(self, body: dict[str, Any]) -> str:
        what = "POST /result"
        raw = await self._request("POST", "/result", what, body=body)
        if not raw.strip():
            return ""  # the protocol allows an empty body
        action = self._object(what, raw).get("action", "")
        if not isinstance(action, str):
            raise self._malformed(what, "'action' is not a string")
        return action

    async def end_stage(self, child_id: str, strategy_id: str, stage_name: str) -> EndStageAnswer:
        what = "POST /end_stage"
        body = {"id": child_id, "strategy_id": strategy_id, "stage_name": stage_name}
        answer = await self._json_object("POST", "/end_stage", what, body)
        end = answer.get("end_stage")
        action = answer.get("action", "")
        if not isinstance(end, bool):
            raise self._malformed(what, "'end_stage' is not true or false")
        if action is None:
            action = ""
        if not isinstance(action, str):
            raise self._malformed(what, "'action' is not a string")
        return EndStageAnswer(end, action)
