"""``Client``: the operator APIs of ``release-coordinator serve`` over HTTP (httpx, async).

Every method sends one request and answers the decoded JSON of the answer (a ``dict``: the
API's object, or a page ``{"items", "limit", "offset", "next_offset"}``); a refusal raises the
library's exception for it (:mod:`release_coordinator.client.errors`). The token is sent as a
bearer header and never appears in a message.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from release_coordinator.client.errors import error_from_answer, malformed
from release_coordinator.client.webhooks import WebhookCalls
from release_coordinator.errors import (
    ConfigurationError,
    MalformedAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
)

__all__ = ["DEFAULT_URL", "Client"]

#: Where ``release-coordinator serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8000"

JSON = dict[str, Any]


def _segment(value: str) -> str:
    """An id as one path segment (every reserved character escaped)."""
    if not value:
        raise ConfigurationError("an id may not be empty")
    return quote(value, safe="")


def _fields(**values: Any) -> JSON:
    """The values that are not None."""
    return {k: v for k, v in values.items() if v is not None}


def _many(values: str | Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [values] if isinstance(values, str) else list(values)


class Client(WebhookCalls):
    """An operator's client of both APIs (the Coordinator's and the RolloutManager's) that
    ``release-coordinator serve`` serves at ``url``.

    Use it as ``async with Client(url, token=...) as client``. ``transport`` is httpx's (an
    ``httpx.ASGITransport(app=...)`` talks to an app in process); ``timeout`` is per request.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"the server's URL must be http(s)://HOST[:PORT], not {url!r}")
        if not timeout > 0:
            raise ConfigurationError(f"the time-out must be a positive number, not {timeout!r}")
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the one request -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one request; the decoded JSON of a success (None for 204), or the exception
        of a refusal."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._http.request(method, path, params=query, json=json)
        except httpx.TimeoutException:
            raise PeerTimeoutError(f"{self.url} did not answer in time", peer=self.url) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            raise ConfigurationError(f"cannot send to {self.url}: {error}") from None
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            raise PeerUnreachableError(
                f"cannot reach {self.url}: {reason}", peer=self.url
            ) from None
        if not response.is_success:
            raise error_from_answer(response, self.url)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise malformed(response, self.url, "a body that is not JSON") from None

    async def _object(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> JSON:
        answer = await self.request(method, path, params=params, json=json)
        if not isinstance(answer, dict):
            raise MalformedAnswerError(
                f"{self.url} answered no JSON object", peer=self.url, status_code=200
            )
        return answer

    async def status(self) -> JSON:
        """``GET /status`` (needs no token): the server's name and version."""
        return await self._object("GET", "/status")

    # -- task services -------------------------------------------------------------------------

    async def list_services(
        self, *, enabled: bool | None = None, limit: int | None = None, offset: int | None = None
    ) -> JSON:
        flag = None if enabled is None else str(enabled).lower()
        params = _fields(enabled=flag, limit=limit, offset=offset)
        return await self._object("GET", "/task-services", params=params)

    async def get_service(self, service_id: str) -> JSON:
        return await self._object("GET", f"/task-services/{_segment(service_id)}")

    async def register_service(
        self, name: str, url: str, *, enabled: bool = True, check: bool = True
    ) -> JSON:
        """Register a task service; with ``check`` the server asks its ``GET /status`` first."""
        body = {"name": name, "url": url, "enabled": enabled, "check": check}
        return await self._object("POST", "/task-services", json=body)

    async def update_service(
        self, service_id: str, *, name: str | None = None, url: str | None = None
    ) -> JSON:
        body = _fields(name=name, url=url)
        return await self._object("PATCH", f"/task-services/{_segment(service_id)}", json=body)

    async def remove_service(self, service_id: str) -> None:
        """Forget a task service (ConflictError while an unfinished release uses it)."""
        await self.request("DELETE", f"/task-services/{_segment(service_id)}")

    async def enable_service(self, service_id: str) -> JSON:
        return await self._object("POST", f"/task-services/{_segment(service_id)}/enable")

    async def disable_service(self, service_id: str) -> JSON:
        return await self._object("POST", f"/task-services/{_segment(service_id)}/disable")

    async def check_service(self, service_id: str) -> JSON:
        """Ask the task service's ``GET /status`` now; the service with its health."""
        return await self._object("POST", f"/task-services/{_segment(service_id)}/health")

    # -- releases ------------------------------------------------------------------------------

    async def list_releases(
        self,
        *,
        state: str | Iterable[str] | None = None,
        tag: str | None = None,
        author: str | None = None,
        study: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        """A page of releases, newest first (only those that name ``study``, when given)."""
        params = _fields(
            state=_many(state), tag=tag, author=author, study=study, limit=limit, offset=offset
        )
        return await self._object("GET", "/releases", params=params)

    async def get_release(self, release_id: str) -> JSON:
        return await self._object("GET", f"/releases/{_segment(release_id)}")

    async def create_release(
        self,
        name: str,
        *,
        description: str | None = None,
        studies: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        author: str | None = None,
        is_major: bool = False,
        auto_publish: bool = False,
        required_approvals: int | None = None,
        checks: Iterable[str] | None = None,
        publish_at: datetime | str | None = None,
    ) -> JSON:
        """A release over every enabled task service (the author: the token's name), with
        its gates before publish when given (``publish_at``: a time with its zone)."""
        body = _fields(
            name=name,
            description=description,
            studies=None if studies is None else list(studies),
            tags=None if tags is None else list(tags),
            author=author,
            is_major=is_major,
            auto_publish=auto_publish,
            required_approvals=required_approvals,
            checks=None if checks is None else list(checks),
            publish_at=publish_at.isoformat() if isinstance(publish_at, datetime) else publish_at,
        )
        return await self._object("POST", "/releases", json=body)

    async def update_release(
        self,
        release_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> JSON:
        body = _fields(
            name=name, description=description, tags=None if tags is None else list(tags)
        )
        return await self._object("PATCH", f"/releases/{_segment(release_id)}", json=body)

    async def publish_release(self, release_id: str) -> JSON:
        """Publish a staged release (ConflictError otherwise)."""
        return await self._object("POST", f"/releases/{_segment(release_id)}/publish")

    async def cancel_release(self, release_id: str, *, reason: str | None = None) -> JSON:
        body = _fields(reason=reason) or None
        path = f"/releases/{_segment(release_id)}/cancel"
        return await self._object("POST", path, json=body)

    async def run_again(self, release_id: str) -> JSON:
        """A new release like a finished one."""
        return await self._object("POST", f"/releases/{_segment(release_id)}/run-again")

    async def list_tasks(
        self,
        release_id: str,
        *,
        state: str | Iterable[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        params = _fields(state=_many(state), limit=limit, offset=offset)
        path = f"/releases/{_segment(release_id)}/tasks"
        return await self._object("GET", path, params=params)

    async def get_task(self, release_id: str, task_id: str) -> JSON:
        path = f"/releases/{_segment(release_id)}/tasks/{_segment(task_id)}"
        return await self._object("GET", path)

    async def list_events(
        self,
        *,
        release_id: str | None = None,
        task_id: str | None = None,
        task_service_id: str | None = None,
        type: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        after_id: int | None = None,
        since: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        """A page of the event log, oldest first."""
        params = _fields(
            release_id=release_id,
            task_id=task_id,
            task_service_id=task_service_id,
            type=_many(type),
            kind=_many(kind),
            after_id=after_id,
            since=since,
            limit=limit,
            offset=offset,
        )
        return await self._object("GET", "/events", params=params)

    # -- release notes and studies ---------------------------------------------------------

    async def list_notes(
        self,
        release_id: str,
        *,
        study_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        """A page of a release's notes, oldest first (``study_id=""``: those on the release
        as a whole)."""
        params = _fields(study_id=study_id, limit=limit, offset=offset)
        path = f"/releases/{_segment(release_id)}/notes"
        return await self._object("GET", path, params=params)

    async def add_note(
        self,
        release_id: str,
        text: str,
        *,
        study_id: str | None = None,
        author: str | None = None,
    ) -> JSON:
        """A note (Markdown) on a release, or on one of its studies (the author: the
        token's name)."""
        body = _fields(text=text, study_id=study_id, author=author)
        return await self._object("POST", f"/releases/{_segment(release_id)}/notes", json=body)

    async def get_note(self, note_id: str) -> JSON:
        return await self._object("GET", f"/notes/{_segment(note_id)}")

    async def edit_note(self, note_id: str, text: str) -> JSON:
        return await self._object("PATCH", f"/notes/{_segment(note_id)}", json={"text": text})

    async def delete_note(self, note_id: str) -> None:
        await self.request("DELETE", f"/notes/{_segment(note_id)}")

    async def list_studies(self, *, limit: int | None = None, offset: int | None = None) -> JSON:
        """A page of the studies releases name, newest first."""
        return await self._object("GET", "/studies", params=_fields(limit=limit, offset=offset))

    async def get_study(self, study_id: str) -> JSON:
        """A study: its releases, latest and last published versions."""
        return await self._object("GET", f"/studies/{_segment(study_id)}")

    async def list_study_notes(
        self, study_id: str, *, limit: int | None = None, offset: int | None = None
    ) -> JSON:
        """A page of the notes on a study, across its releases, oldest first."""
        params = _fields(limit=limit, offset=offset)
        return await self._object("GET", f"/studies/{_segment(study_id)}/notes", params=params)

    # -- rollouts ------------------------------------------------------------------------------

    async def list_rollouts(
        self,
        *,
        state: str | Iterable[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        params = _fields(state=_many(state), limit=limit, offset=offset)
        return await self._object("GET", "/rollouts", params=params)

    async def get_rollout(self, rollout_id: str) -> JSON:
        """A rollout and its bundle."""
        return await self._object("GET", f"/rollouts/{_segment(rollout_id)}")

    async def create_rollout(
        self,
        strategy: str,
        archive: bytes,
        target: Mapping[str, Any],
        *,
        name: str | None = None,
        match: str | None = None,
        priority: int | None = None,
        policy: Mapping[str, Any] | None = None,
        start: bool = True,
        after_release: str | None = None,
    ) -> JSON:
        """Upload a bundle (the strategy's YAML and ``fns.zip``) and create its rollout over
        ``target`` (a GeoJSON area); ``start=False`` leaves it a draft; ``after_release``
        (a data release's id) makes it wait for that release to be published."""
        body = _fields(
            strategy=strategy,
            archive=base64.b64encode(archive).decode("ascii"),
            target=dict(target),
            name=name,
            match=match,
            priority=priority,
            policy=None if policy is None else dict(policy),
            start=start,
            after_release=after_release,
        )
        return await self._object("POST", "/rollouts", json=body)

    async def create_rollout_from_folder(
        self, folder: str | Path, target: Mapping[str, Any], **options: Any
    ) -> JSON:
        """:meth:`create_rollout` of a release folder (``strategy.yaml`` and ``fns/``), checked
        and zipped here first (:meth:`ReleaseBundle.from_folder`: BundleError if it does not
        hold); ``options`` are :meth:`create_rollout`'s."""
        from release_coordinator.rollout.models import ReleaseBundle

        bundle = await asyncio.to_thread(ReleaseBundle.from_folder, folder)
        return await self.create_rollout(
            bundle.strategy_text, bundle.archive.data, target, **options
        )

    async def _action(self, rollout_id: str, action: str, body: JSON | None = None) -> JSON:
        path = f"/rollouts/{_segment(rollout_id)}/{action}"
        return await self._object("POST", path, json=body)

    async def start_rollout(self, rollout_id: str) -> JSON:
        return await self._action(rollout_id, "start")

    async def pause_rollout(self, rollout_id: str) -> JSON:
        return await self._action(rollout_id, "pause")

    async def resume_rollout(self, rollout_id: str) -> JSON:
        return await self._action(rollout_id, "resume")

    async def abort_rollout(self, rollout_id: str, *, reason: str | None = None) -> JSON:
        """Abort: its children roll back (an aborted rollout is answered as it is)."""
        return await self._action(rollout_id, "abort", _fields(reason=reason) or None)

    async def promote_stage(self, rollout_id: str, stage: str) -> JSON:
        """End a WaitForSignal stage now, whatever its barrier's condition."""
        return await self._action(rollout_id, f"stages/{_segment(stage)}/promote")

    async def approve_stage(self, rollout_id: str, stage: str) -> JSON:
        """Approve a stage the rollout's policy names in ``approvals`` (an admin's action):
        ``{"rollout": ..., "approvals": [{"stage", "approved"}]}``."""
        return await self._action(rollout_id, f"stages/{_segment(stage)}/approve")

    async def rollout_what_if(self, rollout_id: str, *, limit: int | None = None) -> JSON:
        """Which registered children a draft rollout would reach now, per area and per wave
        (``limit``: the most ids listed per group)."""
        path = f"/rollouts/{_segment(rollout_id)}/what-if"
        return await self._object("GET", path, params=_fields(limit=limit))

    async def exclude_child(
        self, rollout_id: str, child_id: str, *, reason: str | None = None
    ) -> JSON:
        """Exclude a child from the rollout (never offered it again; it rolls back if it runs
        it): the child's state in the rollout."""
        path = f"children/{_segment(child_id)}/exclude"
        return await self._action(rollout_id, path, _fields(reason=reason) or None)

    async def retry_rollout(
        self, rollout_id: str, *, children: str | Iterable[str] | None = None
    ) -> JSON:
        """Offer the rollout again to the children whose release failed (or the ones named):
        ``{"rollout": ..., "retried": [child ids]}``."""
        return await self._action(rollout_id, "retry", _fields(children=_many(children)) or None)

    async def rollout_status(self, rollout_id: str, *, bbox: str | None = None) -> JSON:
        """Counts per status, outcome and stage, aggregates, lost children (``bbox``:
        ``minLon,minLat,maxLon,maxLat``, only the children in it)."""
        path = f"/rollouts/{_segment(rollout_id)}/status"
        return await self._object("GET", path, params=_fields(bbox=bbox))

    async def rollout_children(
        self,
        rollout_id: str,
        *,
        status: str | None = None,
        bbox: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        """A page of the children's states in the rollout."""
        params = _fields(status=status, bbox=bbox, limit=limit, offset=offset)
        path = f"/rollouts/{_segment(rollout_id)}/children"
        return await self._object("GET", path, params=params)

    async def list_rollout_events(
        self,
        rollout_id: str | None = None,
        *,
        child_id: str | None = None,
        stage: str | None = None,
        type: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        after_id: int | None = None,
        since: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> JSON:
        """A page of the rollout event log, oldest first: one rollout's (``rollout_id``), or
        every rollout's."""
        params = _fields(
            child_id=child_id,
            stage=stage,
            type=_many(type),
            kind=_many(kind),
            after_id=after_id,
            since=since,
            limit=limit,
            offset=offset,
        )
        if rollout_id is None:
            return await self._object("GET", "/rollout-events", params=params)
        path = f"/rollouts/{_segment(rollout_id)}/events"
        return await self._object("GET", path, params=params)

    async def list_children(self, *, limit: int | None = None, offset: int | None = None) -> JSON:
        """A page of the registered children."""
        return await self._object("GET", "/children", params=_fields(limit=limit, offset=offset))

    async def revoke_child_token(self, child_id: str) -> None:
        await self.request("DELETE", f"/children/{_segment(child_id)}/token")
