"""Webhooks: the Coordinator's events, delivered to HTTP receivers outside the process.

A :class:`Webhook` is a subscription: a URL, the events it wants (by kind, type and, for
transitions, new state; nothing given: every event), and a secret that signs every delivery.
Its *delivery state* lives with it in the store: ``cursor`` is the id of the last event the
receiver acknowledged (or did not want), so a delivery outlives a restart of the process
that was sending it, and every event after the cursor is sent until a ``2xx`` answer
acknowledges it: at least once, in order. :class:`~release_coordinator.coordinator.delivery.
WebhookDispatcher` does the sending; :class:`WebhooksMixin` is the Coordinator's part that
subscribes, changes and lists.

**Signatures** follow the `Standard Webhooks <https://www.standardwebhooks.com>`_
specification, so a receiver may check them with any of its libraries (or
:func:`verify_webhook`): the headers ``webhook-id`` (the message's id, the same on every
retry), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,`` and the
base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret's key). Secrets look like
``whsec_`` and base64 of 24 random bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from release_coordinator._version import __version__
from release_coordinator.coordinator.events import EventsMixin
from release_coordinator.coordinator.models import EventKind, EventType, new_id
from release_coordinator.coordinator.webhook_records import (
    DEFAULT_MAX_BATCH,
    MAX_BATCH,
    SETTINGS,
    Webhook,
    WebhookDelivery,
)
from release_coordinator.errors import Problem, ValidationError, WebhookSignatureError
from release_coordinator.schemas import MAX_TEXT

__all__ = [
    "WebhooksMixin",
    "delivery_headers",
    "new_webhook_secret",
    "printable_excerpt",
    "sign_webhook",
    "verify_webhook",
    "webhook_problems",
]

_SECRET_PREFIX = "whsec_"
#: How far a ``webhook-timestamp`` may be from the receiver's clock (Standard Webhooks' 5 min).
DEFAULT_TOLERANCE = 300.0


# -- signatures ----------------------------------------------------------------------------------
def new_webhook_secret() -> str:
    """A fresh secret: ``whsec_`` and base64 of 24 random bytes."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    text = secret.removeprefix(_SECRET_PREFIX)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' and base64") from None


def _signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign_webhook(
    secret: str, message_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The headers that sign ``body`` as message ``message_id`` (Standard Webhooks)."""
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(at),
        "webhook-signature": "v1," + _signature(_key(secret), message_id, at, body),
    }


def delivery_headers(secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """The headers of a POST of ``body`` (JSON) to a webhook's receiver, signed as message
    ``message_id``: what a delivery and a check before publish send."""
    return {
        "content-type": "application/json",
        "user-agent": f"release-coordinator/{__version__}",
        **sign_webhook(secret, message_id, body),
    }


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a delivery as its receiver: ``headers`` (any mapping with lower-case keys, or
    httpx/Starlette headers) must sign ``body`` under ``secret``, within ``tolerance``
    seconds of ``now``. WebhookSignatureError says what is wrong."""
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not message_id or not stamp or not signatures:
        raise WebhookSignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        at = int(stamp)
    except ValueError:
        raise WebhookSignatureError(f"webhook-timestamp {stamp!r} is not Unix seconds") from None
    clock = time.time() if now is None else now
    if abs(clock - at) > tolerance:
        raise WebhookSignatureError(f"webhook-timestamp {at} is more than {tolerance:g} s off")
    expected = _signature(_key(secret), message_id, at, body)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookSignatureError("no webhook-signature matches the body")


# -- checks --------------------------------------------------------------------------------------
def printable_excerpt(text: str, most: int = 200) -> str:
    """The start of ``text`` (a peer's answer, an error) fit for a log line: at most ``most``
    characters, anything unprintable as a space."""
    return "".join(c if c.isprintable() else " " for c in text[:most]).strip()


def _url_problems(url: object) -> list[Problem]:
    if not isinstance(url, str) or not url:
        return [("url", "must be an http(s) URL")]
    if len(url) > 2048:
        return [("url", "is longer than 2048 characters")]
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # (decoding an IDNA host may raise ValueError)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        return [("url", f"is no URL ({printable_excerpt(str(exc))})")]
    if parsed.scheme not in ("http", "https") or not host:
        return [("url", "must be an http(s) URL with a host")]
    if port is not None and not 1 <= port <= 65535:
        return [("url", f"has port {port}, not within 1..65535")]
    if parsed.fragment:
        return [("url", "must not have a fragment")]
    return []


def _names(field: str, values: object, allowed: Sequence[str] | None) -> list[Problem]:
    if not isinstance(values, list | tuple):
        return [(field, "must be a list")]
    problems: list[Problem] = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value or len(value) > 64:
            problems.append((f"{field}[{i}]", "must be a short string"))
        elif not value.isprintable():
            problems.append((f"{field}[{i}]", "must be printable text"))
        elif allowed is not None and value not in allowed:
            problems.append((f"{field}[{i}]", f"must be one of {', '.join(allowed)}"))
    if len(set(map(str, values))) != len(values):
        problems.append((field, "lists a value twice"))
    return problems


def webhook_problems(settings: Mapping[str, Any]) -> list[Problem]:
    """What is wrong with these webhook settings (any of :data:`SETTINGS`), with the path of
    each problem."""
    problems: list[Problem] = []
    if "url" in settings:
        problems += _url_problems(settings["url"])
    if "secret" in settings:
        secret = settings["secret"]
        try:
            if (
                not isinstance(secret, str)
                or not secret.startswith(_SECRET_PREFIX)
                or len(secret) > 200
                or len(_key(secret)) < 16
            ):
                problems.append(("secret", "must be 'whsec_' and base64 of 16 to 144 bytes"))
        except ValueError as exc:
            problems.append(("secret", str(exc)))
    if "kinds" in settings:
        problems += _names("kinds", settings["kinds"], [k.value for k in EventKind])
    if "types" in settings:
        problems += _names("types", settings["types"], [t.value for t in EventType])
    if "states" in settings:
        states = settings["states"]
        problems += _names("states", states, None)
        if isinstance(states, list | tuple) and len(states) > 64:
            problems.append(("states", "names more than 64 states"))
    if "description" in settings:
        text = settings["description"]
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            problems.append(("description", f"must be text of at most {MAX_TEXT} characters"))
    if "enabled" in settings and not isinstance(settings["enabled"], bool):
        problems.append(("enabled", "must be true or false"))
    if "max_batch" in settings:
        batch = settings["max_batch"]
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            problems.append(("max_batch", f"must be an integer within 1..{MAX_BATCH}"))
    return problems


def _typed(settings: Mapping[str, Any]) -> dict[str, Any]:
    typed = dict(settings)
    if "kinds" in typed:
        typed["kinds"] = tuple(EventKind(k) for k in typed["kinds"])
    if "types" in typed:
        typed["types"] = tuple(EventType(t) for t in typed["types"])
    if "states" in typed:
        typed["states"] = tuple(typed["states"])
    return typed


# -- the Coordinator's part ----------------------------------------------------------------------
class WebhooksMixin(EventsMixin):
    """Webhook subscriptions (see the module): the Coordinator's methods."""

    async def add_webhook(
        self,
        url: str,
        *,
        kinds: Sequence[str] = (),
        types: Sequence[str] = (),
        states: Sequence[str] = (),
        description: str = "",
        secret: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        enabled: bool = True,
    ) -> Webhook:
        """Subscribe ``url`` to the events from now on (those after the newest event). The
        answer carries the ``secret`` (a fresh one unless given): keep it, the API shows it
        only here. ValidationError (with paths) for bad settings."""
        settings: dict[str, Any] = {
            "url": url,
            "kinds": list(kinds),
            "types": list(types),
            "states": list(states),
            "description": description,
            "max_batch": max_batch,
            "enabled": enabled,
            "secret": new_webhook_secret() if secret is None else secret,
        }
        problems = webhook_problems(settings)
        if problems:
            raise ValidationError("invalid webhook", problems)
        cursor = await self.store.last_event_id()
        webhook = Webhook(new_id("WH"), cursor=cursor, **_typed(settings))
        return await self.store.add_webhook(webhook)

    async def get_webhook(self, webhook_id: str) -> Webhook:
        """The webhook; NotFoundError if none."""
        return await self.store.get_webhook(webhook_id)

    async def list_webhooks(self, *, enabled: bool | None = None) -> list[Webhook]:
        """Every webhook (only the enabled or disabled ones, when ``enabled`` says), oldest
        first."""
        return await self.store.list_webhooks(enabled=enabled)

    async def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        """Change a webhook's settings (:data:`SETTINGS`). Enabling a disabled webhook
        resumes its deliveries where they stopped (nothing is lost: the events after its
        cursor are still in the log) and forgets its failures. ValidationError; NotFoundError."""
        unknown = sorted(set(changes) - set(SETTINGS))
        problems: list[Problem] = [(name, "is no webhook setting") for name in unknown]
        problems += webhook_problems(changes)
        if problems:
            raise ValidationError("invalid webhook change", problems)
        current = await self.store.get_webhook(webhook_id)
        typed = _typed(changes)
        if set(changes) & {"kinds", "types", "states", "max_batch"}:
            typed["pending_until"] = 0  # a batch being retried is made anew, a new message
        if typed.get("enabled") and not current.enabled:
            typed.update(failures=0, next_attempt_at=None, disabled_reason="", last_error="")
        return await self.store.update_webhook(webhook_id, **typed)

    async def remove_webhook(self, webhook_id: str) -> None:
        """Unsubscribe (its delivery log goes too); NotFoundError."""
        await self.store.remove_webhook(webhook_id)

    async def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[WebhookDelivery]:
        """The webhook's delivery log, newest first; NotFoundError."""
        return await self.store.list_webhook_deliveries(webhook_id, limit=limit, offset=offset)
