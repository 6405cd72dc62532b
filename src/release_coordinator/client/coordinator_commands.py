"""``release-coordinator services ...`` and ``releases ...``: the Coordinator's operator API."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from release_coordinator.client.exits import EXIT_OK, EXIT_REFUSED
from release_coordinator.client.http import Client
from release_coordinator.client.render import Output, View

__all__ = ["add_releases", "add_services", "release_view"]

RELEASE_FINAL = ("published", "canceled", "failed")
FORMATTER = argparse.RawDescriptionHelpFormatter


def _group(commands: Any, name: str, text: str, epilog: str) -> Any:
    parser = commands.add_parser(
        name, help=text, description=text, epilog=epilog, formatter_class=FORMATTER
    )
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


def _action(
    actions: Any, name: str, handler: Any, text: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(
        name, help=text, description=text, parents=[common]
    )
    parser.set_defaults(handler=handler)
    return parser


def add_paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="at most this many (1..1000; default 100)")
    parser.add_argument("--offset", type=int, help="skip this many (the next page's offset)")


# -- services --------------------------------------------------------------------------------


def _service_row(s: dict[str, Any]) -> list[object]:
    health = s.get("health") or {}
    return [s["id"], s["name"], s["url"], s["enabled"], health.get("status", "")]


SERVICE_COLUMNS = ["ID", "NAME", "URL", "ENABLED", "HEALTH"]


def _said_service(out: Output, service: dict[str, Any]) -> int:
    if out.json_mode:
        out.json(service)
    else:
        state = "enabled" if service["enabled"] else "disabled"
        health = (service.get("health") or {}).get("status", "")
        out.line(
            f"service {service['id']} ({service['name']}) at {service['url']}: {state}, {health}"
        )
    return EXIT_OK


async def services_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_services(enabled=args.enabled, limit=args.limit, offset=args.offset)
    out.page(page, SERVICE_COLUMNS, _service_row)
    return EXIT_OK


async def services_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    service = await client.get_service(args.id)
    if out.json_mode:
        out.json(service)
        return EXIT_OK
    health = service.get("health") or {}
    view = View(f"task service {service['id']}")
    for name in ("name", "url", "enabled", "created_at", "updated_at"):
        view.field(name, service.get(name))
    for name in ("status", "reported_name", "reported_version", "last_checked_at", "last_error"):
        view.field(f"health.{name}", health.get(name))
    out.show(view)
    return EXIT_OK


async def services_add(client: Client, args: argparse.Namespace, out: Output) -> int:
    service = await client.register_service(
        args.name, args.service_url, enabled=not args.disabled, check=not args.no_check
    )
    return _said_service(out, service)


async def services_update(client: Client, args: argparse.Namespace, out: Output) -> int:
    service = await client.update_service(args.id, name=args.name, url=args.service_url)
    return _said_service(out, service)


async def services_remove(client: Client, args: argparse.Namespace, out: Output) -> int:
    await client.remove_service(args.id)
    if not out.json_mode:
        out.line(f"removed task service {args.id}")
    return EXIT_OK


async def services_enable(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_service(out, await client.enable_service(args.id))


async def services_disable(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_service(out, await client.disable_service(args.id))


async def services_check(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_service(out, await client.check_service(args.id))


def add_services(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    actions = _group(commands, "services", "list and manage the task services", epilog)
    listing = _action(actions, "list", services_list, "list the task services", common)
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--enabled", action="store_const", const=True, help="only enabled ones")
    which.add_argument(
        "--disabled", dest="enabled", action="store_const", const=False, help="only disabled ones"
    )
    add_paging(listing)
    show = _action(actions, "show", services_show, "one task service and its health", common)
    show.add_argument("id", help="the service's id")
    add = _action(actions, "add", services_add, "register a task service", common)
    add.add_argument("name", help="its name (unique)")
    add.add_argument("service_url", metavar="SERVICE_URL", help="its base URL (http(s)://...)")
    add.add_argument("--disabled", action="store_true", help="leave it out of new releases")
    add.add_argument("--no-check", action="store_true", help="do not ask its GET /status first")
    update = _action(actions, "update", services_update, "rename it or move it", common)
    update.add_argument("id", help="the service's id")
    update.add_argument("--name", help="its new name")
    update.add_argument("--service-url", metavar="URL", help="its new base URL")
    for name, handler, text in (
        ("remove", services_remove, "forget a task service (refused while a release uses it)"),
        ("enable", services_enable, "include a task service in new releases"),
        ("disable", services_disable, "leave a task service out of new releases"),
        ("check", services_check, "ask a task service's GET /status now"),
    ):
        _action(actions, name, handler, text, common).add_argument("id", help="the service's id")


# -- releases --------------------------------------------------------------------------------


RELEASE_COLUMNS = ["ID", "NAME", "VERSION", "STATE", "AUTHOR", "CREATED"]


def _release_row(r: dict[str, Any]) -> list[object]:
    return [r["id"], r["name"], r["version"], r["state"], r["author"], r["created_at"]]


def _said_release(out: Output, release: dict[str, Any]) -> int:
    if out.json_mode:
        out.json(release)
    else:
        out.line(
            f"release {release['id']} ({release['name']} {release['version']}): {release['state']}"
        )
    return EXIT_OK


async def _names(client: Client) -> dict[str, str]:
    """The task services' names by id (what the tasks name)."""
    page = await client.list_services(limit=1000)
    return {s["id"]: s["name"] for s in page["items"]}


async def _release_and_tasks(client: Client, release_id: str) -> dict[str, Any]:
    release = await client.get_release(release_id)
    tasks = await client.list_tasks(release_id, limit=1000)
    return {"release": release, "tasks": tasks["items"]}


def release_view(found: dict[str, Any], names: dict[str, str], *, full: bool) -> View:
    """A release with its tasks per service (``full``: every field of the release)."""
    release = found["release"]
    view = View(f"release {release['id']}: {release['name']} {release['version']}")
    view.field("state", release["state"])
    if full:
        for name in ("author", "description", "studies", "tags", "is_major", "auto_publish"):
            view.field(name, release.get(name))
        for name in ("cloned_from", "created_at", "state_changed_at"):
            view.field(name, release.get(name))
    if release.get("failure"):
        view.field("failure", release["failure"])
    if release.get("publish_gate"):
        view.field("waits", release["publish_gate"])
    rows = [
        [
            names.get(t["task_service_id"], t["task_service_id"]),
            t["state"],
            f"{t['progress']}%",
            t["message"],
        ]
        for t in found["tasks"]
    ]
    return view.table("tasks", ["SERVICE", "STATE", "PROGRESS", "MESSAGE"], rows)


async def releases_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_releases(
        state=args.state or None,
        tag=args.tag,
        author=args.author,
        study=args.study,
        limit=args.limit,
        offset=args.offset,
    )
    out.page(page, RELEASE_COLUMNS, _release_row)
    return EXIT_OK


async def releases_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = await _release_and_tasks(client, args.id)
    if out.json_mode:
        out.json(found)
    else:
        out.show(release_view(found, await _names(client), full=True))
    return EXIT_OK


async def releases_create(client: Client, args: argparse.Namespace, out: Output) -> int:
    release = await client.create_release(
        args.name,
        description=args.description,
        studies=args.study or None,
        tags=args.tag or None,
        author=args.author,
        is_major=args.major,
        auto_publish=args.auto_publish,
        required_approvals=args.approvals,
        checks=args.check,
        publish_at=args.publish_at,
    )
    if args.watch:
        args.id = release["id"]
        return await releases_watch(client, args, out)
    return _said_release(out, release)


async def releases_publish(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_release(out, await client.publish_release(args.id))


async def releases_cancel(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_release(out, await client.cancel_release(args.id, reason=args.reason))


async def releases_run_again(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_release(out, await client.run_again(args.id))


async def releases_approve(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_release(out, await client.approve_release(args.id))


async def releases_checks(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_release(out, await client.rerun_checks(args.id))


def add_gate_options(create: argparse.ArgumentParser) -> None:
    """``releases create``'s options of the gates before publish."""
    create.add_argument(
        "--approvals", type=int, metavar="N", help="approvals by distinct admins it needs"
    )
    create.add_argument(
        "--check", action="append", metavar="WEBHOOK_ID", help="a check it must pass (repeatable)"
    )
    create.add_argument(
        "--publish-at",
        metavar="TIME",
        help="publish it then (ISO 8601 with its zone, e.g. 2026-12-07T09:00:00+00:00)",
    )


def _event_row(e: dict[str, Any]) -> list[object]:
    return [e["id"], e["at"], e["type"], e["kind"], e.get("state") or "", e["message"]]


EVENT_COLUMNS = ["ID", "AT", "TYPE", "KIND", "STATE", "MESSAGE"]


async def releases_events(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_events(
        release_id=args.id,
        kind=args.kind or None,
        type=args.type or None,
        after_id=args.after,
        limit=args.limit,
        offset=args.offset,
    )
    out.page(page, EVENT_COLUMNS, _event_row)
    return EXIT_OK


def _release_done(release: dict[str, Any], until_staged: bool) -> bool:
    state = release["state"]
    return state in RELEASE_FINAL or (until_staged and state == "staged")


def _summary(found: dict[str, Any], names: dict[str, str]) -> str:
    release = found["release"]
    tasks = " | ".join(
        f"{names.get(t['task_service_id'], t['task_service_id'])} {t['state']} {t['progress']}%"
        for t in found["tasks"]
    )
    return f"release {release['id']} {release['state']}: {tasks}"


async def releases_watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Show the release's tasks until it is final (or staged, with ``--until-staged``): 0 if
    it published (or staged), 1 if it was canceled or failed."""
    names = await _names(client)
    found = await _release_and_tasks(client, args.id)
    if out.live_capable:
        with out.live(release_view(found, names, full=False)) as live:
            while not _release_done(found["release"], args.until_staged):
                await asyncio.sleep(args.interval)
                found = await _release_and_tasks(client, args.id)
                if any(t["task_service_id"] not in names for t in found["tasks"]):
                    names = await _names(client)
                live.update(release_view(found, names, full=False).renderable())
    else:
        said = ""
        while True:
            line = _summary(found, names)
            if line != said and not out.json_mode:
                out.line(line)
                said = line
            if _release_done(found["release"], args.until_staged):
                break
            await asyncio.sleep(args.interval)
            found = await _release_and_tasks(client, args.id)
        if out.json_mode:
            out.json(found)
        else:
            out.show(release_view(found, names, full=False))
    state = found["release"]["state"]
    return EXIT_OK if state in ("published", "staged") else EXIT_REFUSED


def add_watching(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="seconds between two looks (default: %(default)g)",
    )


def add_releases(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    actions = _group(commands, "releases", "list, create, follow and act on releases", epilog)
    listing = _action(actions, "list", releases_list, "list the releases, newest first", common)
    listing.add_argument(
        "--state", action="append", help="only releases in this state (repeatable)"
    )
    listing.add_argument("--tag", help="only releases with this tag")
    listing.add_argument("--author", help="only releases by this author")
    listing.add_argument("--study", help="only releases that name this study")
    add_paging(listing)
    show = _action(actions, "show", releases_show, "a release and its tasks", common)
    show.add_argument("id", help="the release's id")
    create = _action(
        actions, "create", releases_create, "create a release over every enabled service", common
    )
    create.add_argument("name", help="the release's name")
    create.add_argument("--description", help="what it is")
    create.add_argument("--study", action="append", help="a study in it (repeatable)")
    create.add_argument("--tag", action="append", help="a tag (repeatable)")
    create.add_argument("--author", help="default: the name of the operator's token")
    create.add_argument("--major", action="store_true", help="a major release")
    create.add_argument(
        "--auto-publish", action="store_true", help="publish it as soon as it is staged"
    )
    create.add_argument(
        "--watch", action="store_true", help="then watch it (the exit status is watch's)"
    )
    create.add_argument("--until-staged", action="store_true", help="with --watch: see watch")
    add_watching(create)
    add_gate_options(create)
    for name, handler, text in (
        ("publish", releases_publish, "publish a staged release (refused otherwise)"),
        ("cancel", releases_cancel, "cancel a release that is not final"),
        ("run-again", releases_run_again, "a new release like a finished one"),
        ("approve", releases_approve, "approve a release before publish (an admin's)"),
        ("checks", releases_checks, "ask a release's checks before publish again"),
    ):
        parser = _action(actions, name, handler, text, common)
        parser.add_argument("id", help="the release's id")
        if name == "cancel":
            parser.add_argument("--reason", help="why (kept in the event log)")
    events = _action(actions, "events", releases_events, "a release's event log", common)
    events.add_argument("id", help="the release's id")
    events.add_argument("--kind", action="append", help="only events of this kind (repeatable)")
    events.add_argument("--type", action="append", help="info, warning or error (repeatable)")
    events.add_argument("--after", metavar="EVENT_ID", type=int, help="only later events")
    add_paging(events)
    watch = _action(
        actions,
        "watch",
        releases_watch,
        "show a release's tasks live until it is final: exit 0 if it published, 1 if it was "
        "canceled or failed",
        common,
    )
    watch.add_argument("id", help="the release's id")
    watch.add_argument(
        "--until-staged", action="store_true", help="stop (exit 0) once it is staged"
    )
    add_watching(watch)
