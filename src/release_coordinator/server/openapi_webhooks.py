"""The webhooks' part of the Coordinator API's OpenAPI document: their schemas (generated from
the Structs of :mod:`release_coordinator.coordinator.webhook_bodies`), parameter and routes."""

from __future__ import annotations

from typing import Any

from release_coordinator.coordinator import webhook_bodies as bodies
from release_coordinator.schemas import schema_components
from release_coordinator.server.openapi_parts import (
    _BODY,
    _OPERATOR,
    _PAGE_PARAMS,
    _choices,
    _param,
    _path_id,
)
from release_coordinator.server.openapi_routes import Route

__all__ = ["WEBHOOK_PARAMETERS", "WEBHOOK_ROUTES", "WEBHOOK_SCHEMAS", "WEBHOOK_TAG"]

WEBHOOK_SCHEMAS: dict[str, Any] = schema_components(
    bodies.WEBHOOK_REQUESTS + bodies.WEBHOOK_ANSWERS, bodies.WEBHOOK_NAMES
)
WEBHOOK_PARAMETERS: dict[str, Any] = {"webhookId": _path_id("webhook_id", "webhook")}
WEBHOOK_TAG = (
    "webhooks",
    "The event log delivered to HTTP receivers: signed (Standard Webhooks), retried with"
    " backoff until a 2xx, in order, at least once. Admins only, reads too.",
)

_ONE = "/webhooks/{webhook_id}"
_WEBHOOK = (_param("webhookId"),)
_DELIVERY = (
    'Each delivery is a POST of `{"webhook_id", "events": [...]}` (the events as'
    " `GET /events` shows them, at most `max_batch`), with the headers `webhook-id` (the"
    " message's id, the same on every retry), `webhook-timestamp` and `webhook-signature`"
    " (`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the secret). A 2xx"
    " acknowledges it; anything else is retried after a backoff, and repeated failures (or a"
    " 410) disable the webhook until `enabled: true`."
)

WEBHOOK_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/webhooks",
        "listWebhooks",
        "Every webhook, oldest first",
        "webhooks",
        {200: ("A page of webhooks.", bodies.WebhookPage)},
        (400, 422, *_OPERATOR),
        parameters=(_choices("enabled", ("true", "false"), "webhooks"), *_PAGE_PARAMS),
    ),
    Route(
        "POST",
        "/webhooks",
        "addWebhook",
        "Subscribe a receiver to the events from now on",
        "webhooks",
        {201: ("The new webhook, with its secret (answered only here).", bodies.WebhookCreated)},
        (*_BODY, *_OPERATOR),
        request=bodies.WebhookCreate,
        description=_DELIVERY,
    ),
    Route(
        "GET",
        _ONE,
        "getWebhook",
        "One webhook, with its delivery state",
        "webhooks",
        {200: ("The webhook.", bodies.WebhookAnswer)},
        (404, *_OPERATOR),
        parameters=_WEBHOOK,
    ),
    Route(
        "PATCH",
        _ONE,
        "changeWebhook",
        "Change a webhook; `enabled: true` resumes a disabled one where it stopped",
        "webhooks",
        {200: ("The webhook as it is now.", bodies.WebhookAnswer)},
        (*_BODY, 404, *_OPERATOR),
        request=bodies.WebhookUpdate,
        parameters=_WEBHOOK,
    ),
    Route(
        "DELETE",
        _ONE,
        "removeWebhook",
        "Unsubscribe (its delivery log goes too)",
        "webhooks",
        {204: ("Removed.", None)},
        (404, *_OPERATOR),
        parameters=_WEBHOOK,
    ),
    Route(
        "GET",
        f"{_ONE}/deliveries",
        "listWebhookDeliveries",
        "A webhook's delivery log, newest first",
        "webhooks",
        {200: ("A page of delivery attempts.", bodies.WebhookDeliveryPage)},
        (400, 404, 422, *_OPERATOR),
        parameters=(*_WEBHOOK, *_PAGE_PARAMS),
    ),
)
