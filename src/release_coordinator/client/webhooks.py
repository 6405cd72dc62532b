"""The :class:`~release_coordinator.client.http.Client`'s calls of the webhooks and of the
gates before publish (a part of it: the Client inherits :class:`WebhookCalls`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from release_coordinator.errors import ConfigurationError

__all__ = ["WebhookCalls"]

JSON = dict[str, Any]


def _segment(value: str) -> str:
    if not value:
        raise ConfigurationError("an id may not be empty")
    return quote(value, safe="")


class WebhookCalls:
    """Webhooks (admins only) and a release's approvals and checks."""

    async def _object(  # (the Client's)
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> JSON:
        raise NotImplementedError

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        raise NotImplementedError

    async def list_webhooks(
        self, *, enabled: bool | None = None, limit: int | None = None, offset: int | None = None
    ) -> JSON:
        params = {
            "enabled": None if enabled is None else str(enabled).lower(),
            "limit": limit,
            "offset": offset,
        }
        return await self._object("GET", "/webhooks", params=params)

    async def add_webhook(
        self,
        url: str,
        *,
        kinds: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        description: str | None = None,
        max_batch: int | None = None,
        secret: str | None = None,
    ) -> JSON:
        """Subscribe ``url``; the answer carries the ``secret`` (only this one does)."""
        body: JSON = {"url": url}
        for name, values in (("kinds", kinds), ("types", types), ("states", states)):
            if values is not None:
                body[name] = list(values)
        for name, value in (
            ("description", description),
            ("max_batch", max_batch),
            ("secret", secret),
        ):
            if value is not None:
                body[name] = value
        return await self._object("POST", "/webhooks", json=body)

    async def get_webhook(self, webhook_id: str) -> JSON:
        return await self._object("GET", f"/webhooks/{_segment(webhook_id)}")

    async def update_webhook(self, webhook_id: str, **changes: Any) -> JSON:
        """Change a webhook (``enabled=True`` resumes a disabled one at its cursor)."""
        return await self._object("PATCH", f"/webhooks/{_segment(webhook_id)}", json=changes)

    async def remove_webhook(self, webhook_id: str) -> None:
        await self.request("DELETE", f"/webhooks/{_segment(webhook_id)}")

    async def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, offset: int | None = None
    ) -> JSON:
        path = f"/webhooks/{_segment(webhook_id)}/deliveries"
        return await self._object("GET", path, params={"limit": limit, "offset": offset})

    async def approve_release(self, release_id: str) -> JSON:
        """Approve a release before publish, under the token's name (an admin's)."""
        return await self._object("POST", f"/releases/{_segment(release_id)}/approve")

    async def rerun_checks(self, release_id: str) -> JSON:
        """Ask a release's checks before publish again."""
        return await self._object("POST", f"/releases/{_segment(release_id)}/checks")
