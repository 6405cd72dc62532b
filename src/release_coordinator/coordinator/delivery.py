"""Sending webhooks: :class:`WebhookDispatcher` reads the event log after each webhook's
cursor and POSTs the events to its receiver, signed, until a ``2xx`` acknowledges them.

::

    dispatcher = WebhookDispatcher(store)           # the Coordinator's store
    async with dispatcher.running():                # a round every second (and on wake())
        ...

One round: the dispatcher leases the webhooks that are due (several processes over one
database share them; each webhook is sent by one at a time, in order), and for each it sends
the next batch of wanted events (at most ``max_batch``), or moves the cursor past the events
it does not want. A ``2xx`` answer moves the cursor past the batch; anything else (another
status, a time-out, a refused connection; a redirect is not followed) is a failure: the same
batch, under the same ``webhook-id``, is tried again after a backoff that doubles up to
``retry.max_delay``, and after ``retry.disable_after`` failures in a row the webhook is
disabled (at once on ``410 Gone``). Nothing is lost meanwhile: the events stay in the log,
and enabling the webhook again resumes at its cursor. Every attempt is in the delivery log.

The body of a delivery is JSON: ``{"webhook_id": ..., "events": [...]}``, each event as
``GET /events`` shows it (its ``id`` identifies it: a receiver drops the ids it has seen,
since a delivery may come twice — after a time-out whose answer was lost, say).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import attrs
import httpx
import msgspec

from release_coordinator.coordinator.events import event_json
from release_coordinator.coordinator.models import Event, utcnow
from release_coordinator.coordinator.webhook_records import (
    DeliveryState,
    Webhook,
    WebhookDelivery,
)
from release_coordinator.coordinator.webhooks import delivery_headers
from release_coordinator.coordinator.webhooks import printable_excerpt as _printable
from release_coordinator.errors import ConfigurationError
from release_coordinator.storage.base import CoordinatorStore, EventFilter

__all__ = ["WebhookDispatcher", "WebhookRetry"]

log = logging.getLogger(__name__)

_ERROR_EXCERPT = 200
#: The most webhooks one round claims (all of them, in practice).
_CLAIM_LIMIT = 100_000


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class WebhookRetry:
    """How failed deliveries are retried: the n-th failure in a row waits
    ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds (less up to the fraction ``jitter``,
    drawn at random), and ``disable_after`` failures in a row disable the webhook."""

    base_delay: float = attrs.field(default=1.0, validator=_positive)
    max_delay: float = attrs.field(default=300.0, validator=_positive)
    jitter: float = 0.2
    disable_after: int = 10

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within 0..1, not {self.jitter!r}")
        if self.disable_after < 1:
            raise ConfigurationError(f"disable_after must be 1 or more, not {self.disable_after}")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds before the next attempt after ``failures`` failures in a row."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(failures - 1, 60))
        return float(ceiling * (1 - self.jitter * rng.random()))


def _failure(exc: httpx.HTTPError, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {_printable(str(exc)) or type(exc).__name__}"
    return f"{type(exc).__name__}: {_printable(str(exc))}"


class WebhookDispatcher:
    """Delivers the webhooks of ``store`` (see the module).

    ``client`` is an httpx client to send with (one of its own, closed with it, by default);
    ``owner`` names this dispatcher's leases (host and process by default); ``interval``
    seconds between rounds; ``timeout`` for one delivery; ``settle``: on a store whose events
    become visible out of order (PostgreSQL), the newest events are left alone this long, so
    that an event committed late is never passed over.
    """

    def __init__(
        self,
        store: CoordinatorStore,
        *,
        client: httpx.AsyncClient | None = None,
        owner: str | None = None,
        interval: float = 1.0,
        timeout: float = 10.0,
        retry: WebhookRetry | None = None,
        lease_seconds: float | None = None,
        settle: float = 2.0,
        concurrency: int = 16,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (("interval", interval), ("timeout", timeout)):
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, not {value!r}")
        if settle < 0 or concurrency < 1:
            raise ConfigurationError("settle must be 0 or more, and concurrency 1 or more")
        self.store = store
        self.owner = owner or f"webhooks@{socket.gethostname()}:{os.getpid()}"
        self.interval = interval
        self.timeout = timeout
        self.retry = retry or WebhookRetry()
        self.lease_seconds = lease_seconds or max(30.0, 3 * timeout)
        if self.lease_seconds <= 2 * timeout:
            raise ConfigurationError(
                f"lease_seconds ({self.lease_seconds:g}) must exceed twice timeout "
                f"({timeout:g}): a send may start just before half the lease"
            )
        self.settle = settle
        self.clock = clock
        self._rng = rng or random.Random()
        self._own_client = client is None
        self._client = client
        self._limit = asyncio.Semaphore(concurrency)
        self._seen: collections.deque[tuple[float, int]] = collections.deque()
        self._held: set[str] = set()
        self._serving: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- rounds --------------------------------------------------------------------------------
    async def _horizon(self) -> int:
        """The newest event id a round may pass: the newest now, or on a store whose events
        become visible out of order, the newest of ``settle`` seconds ago."""
        last = await self.store.last_event_id()
        if self.store.events_visible_in_order() or self.settle == 0:
            return last
        now = time.monotonic()
        self._seen.append((now, last))
        horizon = 0
        while self._seen and self._seen[0][0] <= now - self.settle:
            horizon = self._seen.popleft()[1]
        if horizon:
            self._seen.appendleft((now - self.settle, horizon))  # still the newest settled
        return horizon

    async def deliver_once(self) -> int:
        """One round (see the module): answers the number of delivery attempts made."""
        horizon = await self._horizon()
        due = await self.store.claim_webhooks(
            self.owner, self.lease_seconds, now=self.clock(), limit=_CLAIM_LIMIT
        )
        self._held.update(w.id for w in due)
        # (a webhook this process is sending already, from a round before, is left to it)
        fresh = [w for w in due if w.id not in self._serving]
        counts = await asyncio.gather(
            *(self._serve(w, horizon) for w in fresh), return_exceptions=True
        )
        for webhook, count in zip(fresh, counts, strict=True):
            if isinstance(count, BaseException):
                log.error("webhook %s: its round failed", webhook.id, exc_info=count)
        return sum(c for c in counts if isinstance(c, int))

    async def _serve(self, webhook: Webhook, horizon: int) -> int:
        """Send the webhook's batches until it is caught up, fails, or has had its share of
        the round (half its lease)."""
        started = time.monotonic()
        attempts = 0
        self._serving.add(webhook.id)
        try:
            async with self._limit:
                current: Webhook | None = webhook
                while current is not None and time.monotonic() - started < self.lease_seconds / 2:
                    events = await self._batch(current, horizon)
                    if not events:
                        await self._pass_over(current, horizon)
                        break
                    attempts += 1
                    current = await self._send(current, events)
                    if (
                        current is None
                        or not current.enabled  # disabled meanwhile: stop here
                        or current.failures
                        or len(events) < current.max_batch
                    ):
                        break
        finally:
            self._serving.discard(webhook.id)
        return attempts

    async def _pass_over(self, webhook: Webhook, horizon: int) -> None:
        """Nothing to send: move the cursor past what the webhook does not want (up to the
        horizon; past a pending batch none of whose events it wants any more: its filter
        changed)."""
        if webhook.pending_until:
            cursor = max(webhook.cursor, webhook.pending_until)
        elif horizon > webhook.cursor:
            cursor = horizon
        else:
            return
        # (a pending message none of whose events is wanted is gone, with its failures)
        state = DeliveryState(cursor=cursor, last_delivery_at=webhook.last_delivery_at)
        await self.store.save_delivery(webhook.id, self.owner, state)

    async def _batch(self, webhook: Webhook, horizon: int) -> list[Event]:
        """The next batch: the one being retried, or the wanted events after the cursor up
        to ``horizon``."""
        wanted = EventFilter(
            after_id=webhook.cursor,
            kinds=webhook.kinds or None,
            types=webhook.types or None,
            states=webhook.states or None,
        )
        events = await self.store.list_events(wanted, limit=webhook.max_batch)
        until = webhook.pending_until or horizon
        return [e for e in events if e.id <= until]

    async def _send(self, webhook: Webhook, events: list[Event]) -> Webhook | None:
        first, last = events[0].id, events[-1].id
        message_id = f"{webhook.id}-{first}-{last}"
        body = msgspec.json.encode(
            {"webhook_id": webhook.id, "events": [event_json(e) for e in events]}
        )
        headers = delivery_headers(webhook.secret, message_id, body)
        status: int | None = None
        error = ""
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):  # the whole exchange, its answer too
                status, text = await self._post(webhook.url, body, headers)
            if not 200 <= status < 300:
                excerpt = _printable(text)
                note = " (redirects are not followed)" if 300 <= status < 400 else ""
                error = f"HTTP {status}{note}" + (f": {excerpt}" if excerpt else "")
        except TimeoutError:
            status, error = None, f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            status, error = None, _failure(exc, self.timeout)
        except Exception as exc:  # what a bad URL can make the stack raise: a failure too
            status, error = None, f"{type(exc).__name__}: {_printable(str(exc))}"
        elapsed = (time.perf_counter() - began) * 1000
        now = self.clock()
        delivery = WebhookDelivery(
            id=message_id,
            webhook_id=webhook.id,
            first_event_id=first,
            last_event_id=last,
            events=len(events),
            attempt=webhook.failures + 1,
            ok=not error,
            status_code=status,
            error=error,
            duration_ms=round(elapsed, 3),
            at=now,
        )
        if not error:
            state = DeliveryState(cursor=last, last_delivery_at=now)
        else:
            log.warning("webhook %s: delivery %s failed: %s", webhook.id, message_id, error)
            state = self._failed(webhook, last, error, status, now)
        saved = await self.store.save_delivery(webhook.id, self.owner, state, delivery)
        if saved is None:
            self._held.discard(webhook.id)
        return saved

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """POST ``body``; the answer's status and the start of its text (the rest is not
        read: a receiver's answer cannot fill this process's memory)."""
        async with self._http().stream(
            "POST", url, content=body, headers=headers, timeout=self.timeout
        ) as answer:
            start = b""
            async for chunk in answer.aiter_raw():
                start += chunk
                if len(start) >= _ERROR_EXCERPT * 4:
                    break
            return answer.status_code, start.decode("utf-8", errors="replace")

    def _failed(
        self, webhook: Webhook, last: int, error: str, status: int | None, now: datetime
    ) -> DeliveryState:
        failures = webhook.failures + 1
        reason = ""
        if status == 410:
            reason = "the receiver answered 410 Gone"
        elif failures >= self.retry.disable_after:
            reason = f"{failures} deliveries failed in a row; the last: {error}"
        if reason:
            log.warning("webhook %s disabled: %s", webhook.id, reason)
        wait = timedelta(seconds=self.retry.delay(failures, self._rng))
        return DeliveryState(
            cursor=webhook.cursor,
            pending_until=last,
            failures=failures,
            next_attempt_at=now + wait,
            last_error=error,
            last_delivery_at=webhook.last_delivery_at,
            disabled_reason=reason,
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._client

    # -- the loop ----------------------------------------------------------------------------
    def wake(self) -> None:
        """Start the next round now (rather than after ``interval``)."""
        self._wake.set()

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _loop(self) -> None:
        while True:
            try:
                await self.deliver_once()
            except Exception:  # a store that is down: log, and try again next round
                log.exception("webhook round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    def start(self) -> None:
        """Run rounds in the background until :meth:`stop`."""
        if not self.is_running:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="webhook-dispatcher"
            )

    async def stop(self) -> None:
        """Stop the rounds (a delivery in flight is cancelled: its events are sent again, by
        the next dispatcher to take the webhook), and give up this dispatcher's leases."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for webhook_id in sorted(self._held):
            with contextlib.suppress(Exception):
                await self.store.drop_webhook_lease(webhook_id, self.owner)
        self._held.clear()

    async def aclose(self) -> None:
        """:meth:`stop`, and close the client if it is the dispatcher's own."""
        await self.stop()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookDispatcher]:
        """``async with dispatcher.running():`` runs rounds until the block exits."""
        self.start()
        try:
            yield self
        finally:
            await self.aclose()
