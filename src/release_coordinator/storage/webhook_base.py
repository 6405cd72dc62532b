"""The webhooks' part of the Coordinator's store interface (:class:`~release_coordinator.
storage.base.CoordinatorStore` inherits it): the subscriptions, their delivery state, the
delivery log, and the leases that let one dispatcher of several processes send a webhook's
deliveries at a time.

Leases here are timed like the releases' (the database's clock in SQL); *due* is judged by
the dispatcher's clock (``now``), which also wrote ``next_attempt_at``.
"""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any

from release_coordinator.coordinator.webhook_records import (
    DeliveryState,
    Webhook,
    WebhookDelivery,
)

__all__ = ["DELIVERY_LOG_LIMIT", "WebhookStore"]

#: The delivery attempts kept per webhook (the oldest go first).
DELIVERY_LOG_LIMIT = 1000


class WebhookStore(abc.ABC):
    """Webhook subscriptions and their deliveries (see the module)."""

    def events_visible_in_order(self) -> bool:
        """Whether events become visible in the order of their ids. True of the memory store
        and SQLite (one writer at a time); False of PostgreSQL, where two transactions may
        commit their events out of order, so that a reader following ``after_id`` must let
        the newest ids settle before it moves past them (the dispatcher does)."""
        return True

    @abc.abstractmethod
    async def add_webhook(self, webhook: Webhook) -> Webhook:
        """Store a new webhook; ConflictError when its id is taken."""

    @abc.abstractmethod
    async def get_webhook(self, webhook_id: str) -> Webhook:
        """The webhook with this id; NotFoundError if none."""

    @abc.abstractmethod
    async def list_webhooks(self, *, enabled: bool | None = None) -> list[Webhook]:
        """Every webhook (only those whose ``enabled`` is that, when given), oldest first."""

    @abc.abstractmethod
    async def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        """Replace fields of the webhook (any but ``id`` and ``created_at``), set
        ``updated_at``; NotFoundError."""

    @abc.abstractmethod
    async def remove_webhook(self, webhook_id: str) -> None:
        """Delete the webhook and its delivery log; NotFoundError."""

    @abc.abstractmethod
    async def claim_webhooks(
        self, owner: str, lease_seconds: float, *, now: datetime, limit: int = 100
    ) -> list[Webhook]:
        """Lease to ``owner`` the enabled webhooks that are due (``next_attempt_at`` unset or
        not after ``now``) and whose lease is free, expired or ``owner``'s already (at most
        ``limit``, oldest first); answers them."""

    @abc.abstractmethod
    async def save_delivery(
        self,
        webhook_id: str,
        owner: str,
        state: DeliveryState,
        delivery: WebhookDelivery | None = None,
    ) -> Webhook | None:
        """Write the webhook's delivery ``state`` (a ``state.disabled_reason`` also disables
        it) and append ``delivery`` to its log (keeping the newest
        :data:`DELIVERY_LOG_LIMIT`), together, if ``owner`` still holds its lease; answers
        the webhook, or None when the lease is lost or the webhook is gone (nothing
        written)."""

    @abc.abstractmethod
    async def drop_webhook_lease(self, webhook_id: str, owner: str) -> None:
        """Give up ``owner``'s lease on the webhook (no-op if it does not hold it)."""

    @abc.abstractmethod
    async def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[WebhookDelivery]:
        """The webhook's delivery log, newest first; NotFoundError for an unknown webhook."""
