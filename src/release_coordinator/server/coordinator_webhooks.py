"""The Coordinator API's webhooks: subscriptions to the event log and their delivery logs.

======  ================================  ==========================================  =======
method  path                              what                                        success
======  ================================  ==========================================  =======
GET     ``/webhooks``                     every webhook, oldest first (``enabled``)   200
POST    ``/webhooks``                     subscribe ``{url, kinds, types, states...}`` 201
GET     ``/webhooks/{id}``                one, with its delivery state                200
PATCH   ``/webhooks/{id}``                change it (``enabled: true`` resumes it)    200
DELETE  ``/webhooks/{id}``                unsubscribe                                 204
GET     ``/webhooks/{id}/deliveries``     its delivery log, newest first              200
======  ================================  ==========================================  =======

Every webhook route needs an admin, its reads too (a receiver's URL may be a credential, as a
chat's incoming-webhook URL is); the secret is answered once, by ``POST /webhooks``. The
sending is :class:`~release_coordinator.coordinator.delivery.WebhookDispatcher`'s, which
``serve`` runs. Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.coordinator.webhook_bodies import WebhookCreate, WebhookUpdate
from release_coordinator.coordinator.webhook_records import Webhook, WebhookDelivery
from release_coordinator.coordinator.webhooks import webhook_problems
from release_coordinator.server.common import json_response, page_of, paging
from release_coordinator.server.coordinator_requests import BodyReader, Fields, choices
from release_coordinator.server.coordinator_routes import Table, _Endpoints
from release_coordinator.transports._httpx import url_shown

__all__ = ["WebhookEndpoints", "delivery_json", "webhook_json"]

_TEXTS = ("url", "description", "secret")


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


def webhook_json(webhook: Webhook, *, secret: bool = False) -> dict[str, Any]:
    """A webhook as the API shows it: never its secret, unless ``secret`` (its creation)."""
    shown: dict[str, Any] = {
        "id": webhook.id,
        "url": url_shown(webhook.url),
        "kinds": [k.value for k in webhook.kinds],
        "types": [t.value for t in webhook.types],
        "states": list(webhook.states),
        "description": webhook.description,
        "enabled": webhook.enabled,
        "max_batch": webhook.max_batch,
        "created_at": _iso(webhook.created_at),
        "updated_at": _iso(webhook.updated_at),
        "cursor": webhook.cursor,
        "pending_until": webhook.pending_until,
        "failures": webhook.failures,
        "next_attempt_at": _iso(webhook.next_attempt_at),
        "last_error": webhook.last_error,
        "last_delivery_at": _iso(webhook.last_delivery_at),
        "disabled_reason": webhook.disabled_reason,
    }
    if secret:
        shown["secret"] = webhook.secret
    return shown


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    """One attempt of a webhook's delivery log as the API shows it."""
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "first_event_id": delivery.first_event_id,
        "last_event_id": delivery.last_event_id,
        "events": delivery.events,
        "attempt": delivery.attempt,
        "ok": delivery.ok,
        "status_code": delivery.status_code,
        "error": delivery.error,
        "duration_ms": delivery.duration_ms,
        "at": _iso(delivery.at),
    }


def _settings(body: Mapping[str, Any], allowed: tuple[str, ...], required: bool) -> Fields:
    """The problems of a webhook body, each with its path: texts first (printable, short),
    then the rules of the settings (``webhook_problems``) for what those left alone."""
    fields = Fields(body, "webhook", allowed)
    for key in _TEXTS:
        fields.text(key, required=required and key == "url", blank=key != "url", most=2048)
    flagged = {path.split("[", 1)[0] for path, _ in fields.problems}
    given = {k: v for k, v in body.items() if k in allowed and v is not None and k not in flagged}
    fields.problems += webhook_problems(given)
    return fields


def _create(body: Mapping[str, Any]) -> WebhookCreate:
    fields = _settings(body, WebhookCreate.__struct_fields__, True)
    fields.check()
    return WebhookCreate(**{k: v for k, v in body.items() if v is not None})


def _update(body: Mapping[str, Any]) -> WebhookUpdate:
    fields = _settings(body, WebhookUpdate.__struct_fields__, False)
    fields.check()
    return WebhookUpdate(**{k: v for k, v in body.items() if v is not None})


WEBHOOK_CREATE = BodyReader(WebhookCreate, _create)
WEBHOOK_UPDATE = BodyReader(WebhookUpdate, _update)


def _given(body: WebhookCreate | WebhookUpdate) -> dict[str, Any]:
    return {
        name: getattr(body, name)
        for name in body.__struct_fields__
        if getattr(body, name) is not None
    }


class WebhookEndpoints(_Endpoints):
    """Webhook subscriptions (admins only: see the module)."""

    async def list(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        enabled = choices(request, "enabled", ("true", "false"))
        wanted = None if enabled is None or len(enabled) == 2 else "true" in enabled
        found = await self.coordinator.list_webhooks(enabled=wanted)
        items = [webhook_json(w) for w in found[offset : offset + limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > offset + limit))

    async def create(self, request: Request) -> Response:
        await self.access.operator(request)
        body = await WEBHOOK_CREATE.read(request, self.max_body)
        given = _given(body)
        webhook = await self.coordinator.add_webhook(given.pop("url"), **given)
        return json_response(201, webhook_json(webhook, secret=True))

    async def get(self, request: Request) -> Response:
        await self.access.operator(request)
        webhook = await self.coordinator.get_webhook(request.path_params["webhook_id"])
        return json_response(200, webhook_json(webhook))

    async def update(self, request: Request) -> Response:
        await self.access.operator(request)
        body = await WEBHOOK_UPDATE.read(request, self.max_body)
        webhook = await self.coordinator.update_webhook(
            request.path_params["webhook_id"], **_given(body)
        )
        return json_response(200, webhook_json(webhook))

    async def remove(self, request: Request) -> Response:
        await self.access.operator(request)
        await self.coordinator.remove_webhook(request.path_params["webhook_id"])
        return Response(status_code=204)

    async def deliveries(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        found = await self.coordinator.list_webhook_deliveries(
            request.path_params["webhook_id"], limit=limit + 1, offset=offset
        )
        items = [delivery_json(d) for d in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    def table(self) -> Table:
        one = "/webhooks/{webhook_id}"
        return [
            ("/webhooks", "GET", self.list),
            ("/webhooks", "POST", self.create),
            (one, "GET", self.get),
            (one, "PATCH", self.update),
            (one, "DELETE", self.remove),
            (f"{one}/deliveries", "GET", self.deliveries),
        ]
