"""The webhooks' API bodies, declared once as msgspec Structs (as
:mod:`~release_coordinator.coordinator.api_bodies` does for the rest of the Coordinator's API):
what ``POST /webhooks`` and ``PATCH /webhooks/{id}`` take, and what the webhook endpoints
answer. A rule JSON Schema cannot state stays in code and is named in the description: a URL
is an http(s) URL with a host and no fragment.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from release_coordinator.coordinator.api_bodies import (
    MAX_URL,
    Printable,
    RequestBody,
    Stamp,
    _Answer,
    _Page,
)
from release_coordinator.coordinator.models import EventKind, EventType
from release_coordinator.coordinator.webhook_records import MAX_BATCH
from release_coordinator.schemas import PRINTABLE_PATTERN

__all__ = [
    "WEBHOOK_ANSWERS",
    "WEBHOOK_NAMES",
    "WEBHOOK_REQUESTS",
    "WebhookAnswer",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookDeliveryAnswer",
    "WebhookDeliveryPage",
    "WebhookPage",
    "WebhookUpdate",
]

_URL = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_URL,
        pattern=PRINTABLE_PATTERN,
        description="Where deliveries are POSTed: an http(s) URL with a host and no fragment"
        " (checked in code: 422 otherwise).",
    ),
]
_SECRET = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^whsec_[A-Za-z0-9+/=]+$",
        max_length=200,
        description="The signing secret: `whsec_` and base64 of 16 bytes or more (Standard"
        " Webhooks). Left out on creation: a fresh one, answered once.",
    ),
]
_STATE = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=PRINTABLE_PATTERN)]
_KINDS = Annotated[
    list[EventKind],
    msgspec.Meta(max_length=len(EventKind), description="Only events of these kinds (empty: any)."),
]
_TYPES = Annotated[
    list[EventType],
    msgspec.Meta(max_length=len(EventType), description="Only events of these types (empty: any)."),
]
_STATES = Annotated[
    list[_STATE],
    msgspec.Meta(
        max_length=64,
        description="Only the transitions to these states, e.g. `published` (empty: any event).",
    ),
]
_BATCH = Annotated[
    int, msgspec.Meta(ge=1, le=MAX_BATCH, description="The most events in one delivery.")
]


class WebhookCreate(RequestBody):
    """``POST /webhooks``: subscribe a receiver to the events from now on."""

    NOT_BLANK = frozenset({"url"})

    url: _URL
    kinds: _KINDS | None = None
    types: _TYPES | None = None
    states: _STATES | None = None
    description: Printable | None = None
    secret: _SECRET | None = None
    max_batch: _BATCH | None = None
    enabled: bool | None = None


class WebhookUpdate(RequestBody):
    """``PATCH /webhooks/{id}``: change what is given. `enabled: true` resumes a disabled
    webhook at its cursor (nothing is lost) and forgets its failures; a new `secret` signs the
    next delivery."""

    NOT_BLANK = frozenset({"url"})

    url: _URL | None = None
    kinds: _KINDS | None = None
    types: _TYPES | None = None
    states: _STATES | None = None
    description: Printable | None = None
    secret: _SECRET | None = None
    max_batch: _BATCH | None = None
    enabled: bool | None = None


class WebhookAnswer(_Answer):
    """A webhook (never its secret) with its delivery state: `cursor`, the last event done;
    `pending_until`, the last event of the batch being retried (0: none); `failures` in a row;
    `next_attempt_at`; `disabled_reason` when it was disabled by its failures (or a 410)."""

    id: str
    url: Annotated[str, msgspec.Meta(description="Its password, if any, shown as `***`.")]
    kinds: list[EventKind]
    types: list[EventType]
    states: list[str]
    description: str
    enabled: bool
    max_batch: int
    created_at: Stamp
    updated_at: Stamp
    cursor: Annotated[int, msgspec.Meta(ge=0)]
    pending_until: Annotated[int, msgspec.Meta(ge=0)]
    failures: Annotated[int, msgspec.Meta(ge=0)]
    next_attempt_at: Stamp | None
    last_error: str
    last_delivery_at: Stamp | None
    disabled_reason: str


class WebhookCreated(WebhookAnswer):
    """The new webhook, with its signing `secret`: the only answer that shows it."""

    secret: str


class WebhookDeliveryAnswer(_Answer):
    """One delivery attempt: message `id` (the `webhook-id` header, the same on every retry
    of the message), the events it carried, its `attempt` number, and what came of it."""

    id: str
    webhook_id: str
    first_event_id: int
    last_event_id: int
    events: int
    attempt: int
    ok: bool
    status_code: int | None
    error: str
    duration_ms: float
    at: Stamp


class WebhookPage(_Page[WebhookAnswer]):
    """A page of webhooks, oldest first; ``next_offset`` is null on the last page."""


class WebhookDeliveryPage(_Page[WebhookDeliveryAnswer]):
    """A page of a webhook's delivery log, newest first; ``next_offset`` is null on the last
    page."""


WEBHOOK_REQUESTS: tuple[type[msgspec.Struct], ...] = (WebhookCreate, WebhookUpdate)
WEBHOOK_ANSWERS: tuple[type[msgspec.Struct], ...] = (
    WebhookCreated,
    WebhookPage,
    WebhookDeliveryPage,
)
#: The OpenAPI components' names of the answers' Structs.
WEBHOOK_NAMES = {"WebhookAnswer": "Webhook", "WebhookDeliveryAnswer": "WebhookDelivery"}
