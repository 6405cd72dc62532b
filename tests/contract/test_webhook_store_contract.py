"""The webhooks' part of the storage contract (``store``: every adapter, see conftest.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from release_coordinator import (
    ConflictError,
    CoordinatorStore,
    DeliveryState,
    EventKind,
    EventType,
    NotFoundError,
    Webhook,
    WebhookDelivery,
)
from release_coordinator.coordinator.models import utcnow
from release_coordinator.storage.webhook_base import DELIVERY_LOG_LIMIT

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AT = utcnow()


def hook(webhook_id: str = "WH_1", **kw: object) -> Webhook:
    return Webhook(webhook_id, "http://127.0.0.1:9/hook", SECRET, **kw)  # type: ignore[arg-type]


def attempt(webhook_id: str, n: int, *, ok: bool = False) -> WebhookDelivery:
    return WebhookDelivery(
        id=f"{webhook_id}-1-{n}",
        webhook_id=webhook_id,
        first_event_id=1,
        last_event_id=n,
        events=n,
        attempt=n,
        ok=ok,
        status_code=200 if ok else 500,
        error="" if ok else "HTTP 500",
        duration_ms=1.5,
        at=AT,
    )


async def test_webhooks_are_stored_listed_changed_and_removed(store: CoordinatorStore) -> None:
    first = await store.add_webhook(
        hook(
            "WH_1",
            kinds=(EventKind.TRANSITION,),
            types=(EventType.ERROR, EventType.WARNING),
            states=("published",),
            description="chat",
            cursor=7,
        )
    )
    await store.add_webhook(hook("WH_2", enabled=False, max_batch=5))
    with pytest.raises(ConflictError):
        await store.add_webhook(hook("WH_1"))
    got = await store.get_webhook("WH_1")
    assert got == first
    assert got.kinds == (EventKind.TRANSITION,)
    assert got.states == ("published",)
    assert got.secret == SECRET
    assert got.cursor == 7
    assert [w.id for w in await store.list_webhooks()] == ["WH_1", "WH_2"]
    assert [w.id for w in await store.list_webhooks(enabled=False)] == ["WH_2"]
    assert [w.id for w in await store.list_webhooks(enabled=True)] == ["WH_1"]

    changed = await store.update_webhook(
        "WH_1", url="https://127.0.0.1/x", kinds=(), enabled=False, max_batch=3
    )
    assert (changed.url, changed.kinds, changed.enabled, changed.max_batch) == (
        "https://127.0.0.1/x",
        (),
        False,
        3,
    )
    assert changed.updated_at >= first.updated_at
    assert changed.created_at == first.created_at
    assert await store.get_webhook("WH_1") == changed
    with pytest.raises(NotFoundError):
        await store.update_webhook("WH_9", enabled=True)
    with pytest.raises(ValueError, match="never change"):
        await store.update_webhook("WH_1", id="WH_3")

    await store.remove_webhook("WH_1")
    with pytest.raises(NotFoundError):
        await store.get_webhook("WH_1")
    with pytest.raises(NotFoundError):
        await store.remove_webhook("WH_1")
    with pytest.raises(NotFoundError):
        await store.list_webhook_deliveries("WH_1")
    assert [w.id for w in await store.list_webhooks()] == ["WH_2"]


async def test_claims_take_due_enabled_webhooks_and_exclude_other_owners(
    store: CoordinatorStore,
) -> None:
    now = utcnow()
    await store.add_webhook(hook("WH_1"))
    await store.add_webhook(hook("WH_2", next_attempt_at=now + timedelta(minutes=5)))
    await store.add_webhook(hook("WH_3", enabled=False))
    await store.add_webhook(hook("WH_4", next_attempt_at=now - timedelta(seconds=1)))

    mine = await store.claim_webhooks("a", 30, now=now)
    assert [w.id for w in mine] == ["WH_1", "WH_4"]
    assert await store.claim_webhooks("b", 30, now=now) == []  # a holds them
    assert [w.id for w in await store.claim_webhooks("a", 30, now=now)] == ["WH_1", "WH_4"]
    later = now + timedelta(minutes=10)
    assert [w.id for w in await store.claim_webhooks("b", 30, now=later)] == ["WH_2"]
    assert [w.id for w in await store.claim_webhooks("a", 30, now=now, limit=1)] == ["WH_1"]
    assert await store.claim_webhooks("a", 30, now=now, limit=0) == []

    await store.drop_webhook_lease("WH_1", "b")  # not b's: nothing happens
    assert await store.claim_webhooks("b", 30, now=now) == []
    await store.drop_webhook_lease("WH_1", "a")
    assert [w.id for w in await store.claim_webhooks("b", 30, now=now)] == ["WH_1"]


async def test_an_expired_lease_is_taken_over(store: CoordinatorStore) -> None:
    await store.add_webhook(hook("WH_1"))
    assert await store.claim_webhooks("a", 0.2, now=utcnow())
    assert await store.claim_webhooks("b", 30, now=utcnow()) == []
    await asyncio.sleep(1.2)  # SQLite's clock: the julian day, to the millisecond
    assert [w.id for w in await store.claim_webhooks("b", 30, now=utcnow())] == ["WH_1"]
    # a's lease is gone: what a writes now is refused, and nothing of it is kept
    assert await store.save_delivery("WH_1", "a", DeliveryState(cursor=5)) is None
    assert (await store.get_webhook("WH_1")).cursor == 0


async def test_delivery_state_and_log_are_written_together_under_the_lease(
    store: CoordinatorStore,
) -> None:
    await store.add_webhook(hook("WH_1"))
    # no lease: nothing is written
    assert await store.save_delivery("WH_1", "a", DeliveryState(cursor=3)) is None
    assert await store.claim_webhooks("a", 30, now=utcnow())
    at = utcnow()
    failed = DeliveryState(
        cursor=0,
        pending_until=4,
        failures=1,
        next_attempt_at=at + timedelta(seconds=2),
        last_error="HTTP 500",
    )
    saved = await store.save_delivery("WH_1", "a", failed, attempt("WH_1", 4))
    assert saved is not None
    assert (saved.pending_until, saved.failures, saved.last_error) == (4, 1, "HTTP 500")
    assert saved.next_attempt_at == at + timedelta(seconds=2)
    assert saved.enabled
    assert await store.save_delivery("WH_1", "b", DeliveryState(cursor=9)) is None  # not b's

    ok = DeliveryState(cursor=4, last_delivery_at=at)
    saved = await store.save_delivery("WH_1", "a", ok, attempt("WH_1", 4, ok=True))
    assert saved is not None
    assert (saved.cursor, saved.pending_until, saved.failures, saved.last_error) == (4, 0, 0, "")
    assert saved.next_attempt_at is None
    assert saved.last_delivery_at == at
    log = await store.list_webhook_deliveries("WH_1")
    assert [(d.ok, d.status_code) for d in log] == [(True, 200), (False, 500)]  # newest first
    assert log[1] == attempt("WH_1", 4)
    assert log[1].duration_ms == 1.5
    assert [d.ok for d in await store.list_webhook_deliveries("WH_1", limit=1, offset=1)] == [False]

    # disabling: the reason disables it; a later state without one keeps it disabled
    gone = DeliveryState(cursor=4, failures=1, disabled_reason="the receiver answered 410 Gone")
    saved = await store.save_delivery("WH_1", "a", gone)
    assert saved is not None
    assert not saved.enabled
    assert saved.disabled_reason == "the receiver answered 410 Gone"
    saved = await store.save_delivery("WH_1", "a", DeliveryState(cursor=4))
    assert saved is not None
    assert not saved.enabled
    assert saved.disabled_reason == "the receiver answered 410 Gone"
    assert await store.claim_webhooks("a", 30, now=utcnow()) == []  # disabled: never due
    # removed while leased: the dispatcher's write finds nothing
    await store.remove_webhook("WH_1")
    assert await store.save_delivery("WH_1", "a", ok, attempt("WH_1", 5)) is None


@pytest.mark.slow
async def test_the_delivery_log_keeps_the_newest_attempts(store: CoordinatorStore) -> None:
    await store.add_webhook(hook("WH_1"))
    await store.add_webhook(hook("WH_2"))
    assert await store.claim_webhooks("a", 60, now=utcnow())
    for n in range(1, DELIVERY_LOG_LIMIT + 6):
        state = DeliveryState(cursor=n)
        await store.save_delivery("WH_1", "a", state, attempt("WH_1", n, ok=True))
    await store.save_delivery("WH_2", "a", DeliveryState(cursor=1), attempt("WH_2", 1))
    log = await store.list_webhook_deliveries("WH_1")
    assert len(log) == DELIVERY_LOG_LIMIT
    assert log[0].last_event_id == DELIVERY_LOG_LIMIT + 5
    assert log[-1].last_event_id == 6
    assert await store.list_webhook_deliveries("WH_2") == [attempt("WH_2", 1)]


async def test_events_filter_by_state(store: CoordinatorStore) -> None:
    from release_coordinator import Event, EventFilter

    await store.append_events(
        [
            Event(EventType.INFO, EventKind.TRANSITION, "a", state="staged"),
            Event(EventType.INFO, EventKind.TRANSITION, "b", state="published"),
            Event(EventType.INFO, EventKind.PROGRESS, "c"),
        ]
    )
    found = await store.list_events(EventFilter(states=("published",)))
    assert [e.message for e in found] == ["b"]
    found = await store.list_events(EventFilter(states=("published", "staged"), after_id=1))
    assert [e.message for e in found] == ["b"]
