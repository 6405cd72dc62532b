"""Webhooks in SQL: ``rc_webhooks`` (the subscriptions with their delivery state and lease)
and ``rc_webhook_deliveries`` (their delivery log), schema version 7.

A webhook's lease is two columns of its row, claimed like a release's (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, the database's clock), so that of several processes one sends a
webhook's deliveries at a time, in order. Its delivery state and the attempt's log entry are
written in one transaction, and only while the lease holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa

from release_coordinator.coordinator.models import EventKind, EventType, utcnow
from release_coordinator.coordinator.webhook_records import (
    DeliveryState,
    Webhook,
    WebhookDelivery,
)
from release_coordinator.errors import ConflictError, NotFoundError
from release_coordinator.storage.sql.database import SQLDatabase
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.events import _page
from release_coordinator.storage.sql.schema import webhook_deliveries, webhooks
from release_coordinator.storage.webhook_base import DELIVERY_LOG_LIMIT

__all__: list[str] = []

_LEASE = ("lease_owner", "lease_expires_at")
_COLUMNS = [c for c in webhooks.c if c.name not in ("seq", *_LEASE)]
_DELIVERY_COLUMNS = [c for c in webhook_deliveries.c if c.name != "seq"]
_FIXED = ("id", "created_at")


def _webhook(row: sa.Row[Any]) -> Webhook:
    return Webhook(
        id=row.id,
        url=row.url,
        secret=row.secret,
        kinds=tuple(EventKind(k) for k in row.kinds),
        types=tuple(EventType(t) for t in row.types),
        states=tuple(row.states),
        description=row.description,
        enabled=row.enabled,
        max_batch=row.max_batch,
        created_at=row.created_at,
        updated_at=row.updated_at,
        cursor=row.cursor,
        pending_until=row.pending_until,
        failures=row.failures,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        last_delivery_at=row.last_delivery_at,
        disabled_reason=row.disabled_reason,
    )


def _values(fields: dict[str, Any]) -> dict[str, Any]:
    """A webhook's fields as column values (the filters as JSON lists of names)."""
    values = dict(fields)
    for name in ("kinds", "types", "states"):
        if name in values:
            values[name] = [str(v) for v in values[name]]
    return values


def _delivery(row: sa.Row[Any]) -> WebhookDelivery:
    return WebhookDelivery(**{c.name: getattr(row, c.name) for c in _DELIVERY_COLUMNS})


class _Webhooks(SQLDatabase):
    """The webhooks' part of :class:`~release_coordinator.storage.sql.SQLStore`."""

    def events_visible_in_order(self) -> bool:
        return not self._postgres

    @_edge
    async def add_webhook(self, webhook: Webhook) -> Webhook:
        async with self._write() as conn:
            taken = await self._one(
                conn, sa.select(webhooks.c.id).where(webhooks.c.id == webhook.id)
            )
            if taken is not None:
                raise ConflictError(f"webhook {webhook.id!r} exists", id=webhook.id)
            await conn.execute(sa.insert(webhooks).values(**_values(attrs.asdict(webhook))))
        return webhook

    @_edge
    async def get_webhook(self, webhook_id: str) -> Webhook:
        async with self._read() as conn:
            row = await self._one(conn, sa.select(*_COLUMNS).where(webhooks.c.id == webhook_id))
        if row is None:
            raise NotFoundError("webhook", webhook_id)
        return _webhook(row)

    @_edge
    async def list_webhooks(self, *, enabled: bool | None = None) -> list[Webhook]:
        query = sa.select(*_COLUMNS).order_by(webhooks.c.seq)
        if enabled is not None:
            query = query.where(webhooks.c.enabled == enabled)
        async with self._read() as conn:
            return [_webhook(row) for row in await conn.execute(query)]

    @_edge
    async def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        fixed = sorted(set(changes) & set(_FIXED))
        if fixed:
            raise ValueError(f"a webhook's {', '.join(fixed)} never change")
        unknown = sorted(set(changes) - {f.name for f in attrs.fields(Webhook)})
        if unknown:
            raise ValueError(f"no webhook field {', '.join(unknown)}")
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(webhooks)
                .where(webhooks.c.id == webhook_id)
                .values(**_values(changes), updated_at=utcnow())
                .returning(*_COLUMNS),
            )
        if row is None:
            raise NotFoundError("webhook", webhook_id)
        return _webhook(row)

    @_edge
    async def remove_webhook(self, webhook_id: str) -> None:
        async with self._write() as conn:
            # The row first, locked: a dispatcher's save_delivery (which updates it, then logs
            # an attempt) either went before or finds the webhook gone, and logs nothing.
            locked = await self._one(
                conn,
                sa.select(webhooks.c.id).where(webhooks.c.id == webhook_id).with_for_update(),
            )
            if locked is None:
                raise NotFoundError("webhook", webhook_id)
            await conn.execute(
                sa.delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
            )
            gone = await self._one(
                conn,
                sa.delete(webhooks).where(webhooks.c.id == webhook_id).returning(webhooks.c.id),
            )
            if gone is None:
                raise NotFoundError("webhook", webhook_id)

    @_edge
    async def claim_webhooks(
        self, owner: str, lease_seconds: float, *, now: datetime, limit: int = 100
    ) -> list[Webhook]:
        due = sa.and_(
            webhooks.c.enabled.is_(True),
            sa.or_(webhooks.c.next_attempt_at.is_(None), webhooks.c.next_attempt_at <= now),
            self._unleased(webhooks, owner),
        )
        columns = [webhooks.c.seq, *_COLUMNS]
        claimed = await self._claim(webhooks, due, owner, lease_seconds, limit, columns)
        return [_webhook(row) for row in claimed]

    @_edge
    async def save_delivery(
        self,
        webhook_id: str,
        owner: str,
        state: DeliveryState,
        delivery: WebhookDelivery | None = None,
    ) -> Webhook | None:
        values = attrs.asdict(state, recurse=False)
        if state.disabled_reason:
            values["enabled"] = False
        else:
            del values["disabled_reason"]  # an operator's re-enable stays
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(webhooks)
                .where(
                    webhooks.c.id == webhook_id,
                    webhooks.c.lease_owner == owner,
                    webhooks.c.lease_expires_at > self._now(),
                )
                .values(**values)
                .returning(*_COLUMNS),
            )
            if row is None:
                return None
            if delivery is not None:
                await conn.execute(sa.insert(webhook_deliveries).values(**attrs.asdict(delivery)))
                # keep the newest DELIVERY_LOG_LIMIT: those older than the limit-th newest go
                oldest_kept = (
                    sa.select(webhook_deliveries.c.seq)
                    .where(webhook_deliveries.c.webhook_id == webhook_id)
                    .order_by(webhook_deliveries.c.seq.desc())
                    .offset(DELIVERY_LOG_LIMIT - 1)
                    .limit(1)
                    .scalar_subquery()
                )
                await conn.execute(
                    sa.delete(webhook_deliveries).where(
                        webhook_deliveries.c.webhook_id == webhook_id,
                        webhook_deliveries.c.seq < oldest_kept,
                    )
                )
            return _webhook(row)

    @_edge
    async def drop_webhook_lease(self, webhook_id: str, owner: str) -> None:
        await self._drop_lease(webhooks, webhook_id, owner)

    @_edge
    async def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[WebhookDelivery]:
        query = (
            sa.select(*_DELIVERY_COLUMNS)
            .where(webhook_deliveries.c.webhook_id == webhook_id)
            .order_by(webhook_deliveries.c.seq.desc())
        )
        async with self._read() as conn:
            known = await self._one(
                conn, sa.select(webhooks.c.id).where(webhooks.c.id == webhook_id)
            )
            if known is None:
                raise NotFoundError("webhook", webhook_id)
            return [_delivery(row) for row in await conn.execute(_page(query, limit, offset))]
