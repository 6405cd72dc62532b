"""``release-coordinator webhooks ...``: subscriptions of receivers to the event log."""

from __future__ import annotations

import argparse
from typing import Any

from release_coordinator.client.coordinator_commands import _action, _group, add_paging
from release_coordinator.client.exits import EXIT_OK
from release_coordinator.client.http import Client
from release_coordinator.client.render import Output, View

__all__ = ["add_webhooks"]


def _row(w: dict[str, Any]) -> list[object]:
    wants = ",".join(w["kinds"] + w["types"] + w["states"]) or "every event"
    state = "enabled" if w["enabled"] else f"disabled: {w['disabled_reason']}"
    return [w["id"], w["url"], wants, w["cursor"], w["failures"], state]


COLUMNS = ["ID", "URL", "WANTS", "CURSOR", "FAILURES", "STATE"]


def _said(out: Output, webhook: dict[str, Any]) -> int:
    if out.json_mode:
        out.json(webhook)
        return EXIT_OK
    view = View(f"webhook {webhook['id']}")
    for name in ("url", "description", "kinds", "types", "states", "max_batch", "enabled"):
        view.field(name, webhook.get(name))
    for name in ("cursor", "pending_until", "failures", "next_attempt_at", "last_error"):
        view.field(name, webhook.get(name))
    for name in ("last_delivery_at", "disabled_reason"):
        view.field(name, webhook.get(name))
    if "secret" in webhook:
        view.field("secret", f"{webhook['secret']}  (shown once: keep it)")
    out.show(view)
    return EXIT_OK


async def webhooks_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_webhooks(enabled=args.enabled, limit=args.limit, offset=args.offset)
    out.page(page, COLUMNS, _row)
    return EXIT_OK


async def webhooks_add(client: Client, args: argparse.Namespace, out: Output) -> int:
    webhook = await client.add_webhook(
        args.webhook_url,
        kinds=args.kind,
        types=args.type,
        states=args.state,
        description=args.description,
        max_batch=args.max_batch,
    )
    return _said(out, webhook)


async def webhooks_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said(out, await client.get_webhook(args.id))


async def webhooks_enable(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said(out, await client.update_webhook(args.id, enabled=True))


async def webhooks_disable(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said(out, await client.update_webhook(args.id, enabled=False))


async def webhooks_remove(client: Client, args: argparse.Namespace, out: Output) -> int:
    await client.remove_webhook(args.id)
    if not out.json_mode:
        out.line(f"removed webhook {args.id}")
    return EXIT_OK


def _delivery_row(d: dict[str, Any]) -> list[object]:
    outcome = "ok" if d["ok"] else d["error"]
    return [d["at"], d["id"], d["events"], d["attempt"], d["status_code"] or "", outcome]


async def webhooks_deliveries(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_webhook_deliveries(args.id, limit=args.limit, offset=args.offset)
    out.page(page, ["AT", "MESSAGE", "EVENTS", "ATTEMPT", "STATUS", "OUTCOME"], _delivery_row)
    return EXIT_OK


def add_webhooks(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    actions = _group(commands, "webhooks", "subscribe receivers to the event log", epilog)
    listing = _action(actions, "list", webhooks_list, "list the webhooks", common)
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--enabled", action="store_const", const=True, help="only enabled ones")
    which.add_argument(
        "--disabled", dest="enabled", action="store_const", const=False, help="only disabled"
    )
    add_paging(listing)
    add = _action(actions, "add", webhooks_add, "subscribe a receiver (its secret: once)", common)
    add.add_argument("webhook_url", metavar="URL", help="where deliveries are POSTed")
    add.add_argument("--kind", action="append", help="only events of this kind (repeatable)")
    add.add_argument("--type", action="append", help="info, warning or error (repeatable)")
    add.add_argument("--state", action="append", help="only transitions to it (repeatable)")
    add.add_argument("--description", help="what it is for")
    add.add_argument("--max-batch", type=int, help="the most events in one delivery (1..1000)")
    for name, handler, text in (
        ("show", webhooks_show, "a webhook and its delivery state"),
        ("enable", webhooks_enable, "resume a webhook where it stopped (nothing is lost)"),
        ("disable", webhooks_disable, "stop its deliveries (its events wait)"),
        ("remove", webhooks_remove, "unsubscribe"),
    ):
        _action(actions, name, handler, text, common).add_argument("id", help="the webhook's id")
    log = _action(actions, "deliveries", webhooks_deliveries, "its delivery log", common)
    log.add_argument("id", help="the webhook's id")
    add_paging(log)
