"""The webhooks' part of :class:`~release_coordinator.storage.memory.MemoryStore`."""

from __future__ import annotations

import collections
import threading
import time
from datetime import datetime
from typing import Any

import attrs

from release_coordinator.coordinator.models import utcnow
from release_coordinator.coordinator.webhook_records import (
    DeliveryState,
    Webhook,
    WebhookDelivery,
)
from release_coordinator.errors import ConflictError, NotFoundError
from release_coordinator.storage.webhook_base import DELIVERY_LOG_LIMIT, WebhookStore

__all__ = ["MemoryWebhooks"]

_FIXED = ("id", "created_at")


class MemoryWebhooks(WebhookStore):
    """Webhooks in process memory (call :meth:`_init_webhooks` from ``__init__``)."""

    def _init_webhooks(self) -> None:
        self._webhook_lock = threading.Lock()
        self._webhooks: dict[str, Webhook] = {}  # in creation order
        self._webhook_leases: dict[str, tuple[str, float]] = {}
        self._deliveries: dict[str, collections.deque[WebhookDelivery]] = {}

    def _webhook(self, webhook_id: str) -> Webhook:
        try:
            return self._webhooks[webhook_id]
        except KeyError:
            raise NotFoundError("webhook", webhook_id) from None

    async def add_webhook(self, webhook: Webhook) -> Webhook:
        with self._webhook_lock:
            if webhook.id in self._webhooks:
                raise ConflictError(f"webhook {webhook.id!r} exists", id=webhook.id)
            self._webhooks[webhook.id] = webhook
            self._deliveries[webhook.id] = collections.deque(maxlen=DELIVERY_LOG_LIMIT)
            return webhook

    async def get_webhook(self, webhook_id: str) -> Webhook:
        with self._webhook_lock:
            return self._webhook(webhook_id)

    async def list_webhooks(self, *, enabled: bool | None = None) -> list[Webhook]:
        with self._webhook_lock:
            return [w for w in self._webhooks.values() if enabled is None or w.enabled == enabled]

    async def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        fixed = sorted(set(changes) & set(_FIXED))
        if fixed:
            raise ValueError(f"a webhook's {', '.join(fixed)} never change")
        with self._webhook_lock:
            updated = attrs.evolve(self._webhook(webhook_id), **changes, updated_at=utcnow())
            self._webhooks[webhook_id] = updated
            return updated

    async def remove_webhook(self, webhook_id: str) -> None:
        with self._webhook_lock:
            self._webhook(webhook_id)
            del self._webhooks[webhook_id], self._deliveries[webhook_id]
            self._webhook_leases.pop(webhook_id, None)

    async def claim_webhooks(
        self, owner: str, lease_seconds: float, *, now: datetime, limit: int = 100
    ) -> list[Webhook]:
        clock = time.monotonic()
        claimed: list[Webhook] = []
        with self._webhook_lock:
            for webhook in self._webhooks.values():
                if len(claimed) >= limit:
                    break
                if not webhook.enabled or (
                    webhook.next_attempt_at is not None and webhook.next_attempt_at > now
                ):
                    continue
                holder = self._webhook_leases.get(webhook.id)
                if holder is None or holder[0] == owner or holder[1] <= clock:
                    self._webhook_leases[webhook.id] = (owner, clock + lease_seconds)
                    claimed.append(webhook)
        return claimed

    async def save_delivery(
        self,
        webhook_id: str,
        owner: str,
        state: DeliveryState,
        delivery: WebhookDelivery | None = None,
    ) -> Webhook | None:
        with self._webhook_lock:
            current = self._webhooks.get(webhook_id)
            holder = self._webhook_leases.get(webhook_id)
            if current is None or holder is None or holder[0] != owner:
                return None
            if holder[1] <= time.monotonic():
                return None
            changes = attrs.asdict(state, recurse=False)
            if state.disabled_reason:
                changes["enabled"] = False
            else:
                del changes["disabled_reason"]  # an operator's re-enable stays
            updated = attrs.evolve(current, **changes)
            self._webhooks[webhook_id] = updated
            if delivery is not None:
                self._deliveries[webhook_id].append(delivery)
            return updated

    async def drop_webhook_lease(self, webhook_id: str, owner: str) -> None:
        with self._webhook_lock:
            holder = self._webhook_leases.get(webhook_id)
            if holder is not None and holder[0] == owner:
                del self._webhook_leases[webhook_id]

    async def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[WebhookDelivery]:
        with self._webhook_lock:
            self._webhook(webhook_id)
            newest_first = list(reversed(self._deliveries[webhook_id]))
        end = None if limit is None else offset + limit
        return newest_first[offset:end]
