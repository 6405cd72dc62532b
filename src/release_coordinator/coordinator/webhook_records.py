"""The records of webhooks (see :mod:`release_coordinator.coordinator.webhooks`): a
subscription with its delivery state, the state after one attempt, one attempt of the
delivery log."""

from __future__ import annotations

from datetime import datetime

import attrs

from release_coordinator.coordinator.models import EventKind, EventType, utcnow

__all__ = [
    "DEFAULT_MAX_BATCH",
    "MAX_BATCH",
    "SETTINGS",
    "DeliveryState",
    "Webhook",
    "WebhookDelivery",
]

#: Events in one delivery when the subscription does not say (``max_batch``).
DEFAULT_MAX_BATCH = 100
#: The most events one delivery may carry.
MAX_BATCH = 1000


# -- records -------------------------------------------------------------------------------------
@attrs.frozen
class Webhook:
    """A subscription to the event log (see the module). ``kinds``, ``types`` and ``states``
    filter the events (each empty: any); ``max_batch`` bounds the events of one delivery.

    The rest is its delivery state, the dispatcher's: ``cursor`` (events up to this id are
    done), ``pending_until`` (the last event of the batch being retried, 0 when none: a retry
    sends the same batch, under the same message id), ``failures`` (attempts failed in a
    row), ``next_attempt_at`` (no attempt before), ``last_error``, ``last_delivery_at`` (the
    last acknowledged delivery) and ``disabled_reason`` (why it was disabled, when it was).
    """

    id: str
    url: str
    secret: str = attrs.field(repr=False)
    kinds: tuple[EventKind, ...] = ()
    types: tuple[EventType, ...] = ()
    states: tuple[str, ...] = ()
    description: str = ""
    enabled: bool = True
    max_batch: int = DEFAULT_MAX_BATCH
    created_at: datetime = attrs.field(factory=utcnow)
    updated_at: datetime = attrs.field(factory=utcnow)
    cursor: int = 0
    pending_until: int = 0
    failures: int = 0
    next_attempt_at: datetime | None = None
    last_error: str = ""
    last_delivery_at: datetime | None = None
    disabled_reason: str = ""


#: The fields of a :class:`Webhook` an operator changes (``update_webhook``).
SETTINGS = ("url", "secret", "kinds", "types", "states", "description", "enabled", "max_batch")


@attrs.frozen
class DeliveryState:
    """A webhook's delivery state after an attempt (see :class:`Webhook`); a non-empty
    ``disabled_reason`` disables it."""

    cursor: int
    pending_until: int = 0
    failures: int = 0
    next_attempt_at: datetime | None = None
    last_error: str = ""
    last_delivery_at: datetime | None = None
    disabled_reason: str = ""


@attrs.frozen
class WebhookDelivery:
    """One attempt to deliver a message (events ``first_event_id`` .. ``last_event_id``, of
    which ``events`` were sent): its ``attempt`` number (1 for the first try of the message),
    the answer's ``status_code`` (``None`` when there was none) or the ``error``, and how long
    it took. The delivery log keeps the newest attempts of each webhook."""

    id: str
    webhook_id: str
    first_event_id: int
    last_event_id: int
    events: int
    attempt: int
    ok: bool
    status_code: int | None = None
    error: str = ""
    duration_ms: float = 0.0
    at: datetime = attrs.field(factory=utcnow)
