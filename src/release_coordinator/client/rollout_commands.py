"""``release-coordinator rollouts ...``: the RolloutManager's operator API.

There is no separate bundle resource: ``POST /rollouts`` uploads the bundle (the strategy and
``fns.zip``) with the rollout, so ``create`` and ``upload`` both upload one (``upload`` leaves
the rollout a draft to ``start`` later).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import yaml

from release_coordinator.client.coordinator_commands import FORMATTER, add_paging, add_watching
from release_coordinator.client.exits import EXIT_OK, EXIT_REFUSED
from release_coordinator.client.http import Client
from release_coordinator.client.intervention_commands import add_interventions
from release_coordinator.client.render import Output, View
from release_coordinator.errors import ConfigurationError

__all__ = ["add_rollouts", "rollout_ended_well", "status_view"]

ROLLOUT_FINAL = ("aborted", "completed")
COLUMNS = ["ID", "NAME", "STATE", "PRIORITY", "POLICY", "REASON"]


def _row(r: dict[str, Any]) -> list[object]:
    policy = (r.get("policy") or {}).get("type", "")
    return [r["id"], r["name"], r["state"], r["priority"], policy, r.get("reason", "")]


def _said(out: Output, rollout: dict[str, Any]) -> int:
    if out.json_mode:
        out.json(rollout)
    else:
        reason = f" ({rollout['reason']})" if rollout.get("reason") else ""
        out.line(f"rollout {rollout['id']} ({rollout['name']}): {rollout['state']}{reason}")
    return EXIT_OK


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{what} {path}: cannot read it: {error.strerror}") from None


def _document(path: str, what: str) -> Any:
    """A JSON (or YAML) file's content; ConfigurationError (exit 2) if it does not parse."""
    try:
        found = yaml.safe_load(_read(path, what))
    except yaml.YAMLError as error:
        raise ConfigurationError(f"{what} {path}: not JSON or YAML: {error}") from None
    if not isinstance(found, dict):
        raise ConfigurationError(f"{what} {path}: not a JSON object")
    return found


def _folder(path: str) -> None:
    if not Path(path).is_dir():
        raise ConfigurationError(f"{path}: not a folder")


async def _upload(client: Client, args: argparse.Namespace, out: Output, start: bool) -> int:
    target = _document(args.target, "--target")
    options: dict[str, Any] = {
        "name": args.name,
        "match": args.match,
        "priority": args.priority,
        "policy": _document(args.policy, "--policy") if args.policy else None,
        "start": start,
        "after_release": getattr(args, "after_release", None),
    }
    if args.folder is not None:
        if args.strategy or args.archive:
            raise ConfigurationError("give a release folder, or --strategy and --archive")
        _folder(args.folder)
        rollout = await client.create_rollout_from_folder(args.folder, target, **options)
    elif args.strategy and args.archive:
        strategy = _read(args.strategy, "--strategy").decode("utf-8", errors="replace")
        archive = _read(args.archive, "--archive")
        rollout = await client.create_rollout(strategy, archive, target, **options)
    else:
        raise ConfigurationError("give a release folder, or --strategy and --archive")
    return _said(out, rollout)


async def rollouts_create(client: Client, args: argparse.Namespace, out: Output) -> int:
    return await _upload(client, args, out, start=not args.draft)


async def rollouts_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    return await _upload(client, args, out, start=False)


async def rollouts_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_rollouts(
        state=args.state or None, limit=args.limit, offset=args.offset
    )
    out.page(page, COLUMNS, _row)
    return EXIT_OK


async def rollouts_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    rollout = await client.get_rollout(args.id)
    if out.json_mode:
        out.json(rollout)
        return EXIT_OK
    bundle = rollout.get("bundle") or {}
    strategy, archive = bundle.get("strategy") or {}, bundle.get("archive") or {}
    view = View(f"rollout {rollout['id']}: {rollout['name']}")
    for name in ("state", "reason", "priority", "match", "gated", "after_release"):
        view.field(name, rollout.get(name))
    view.field("policy", (rollout.get("policy") or {}).get("type", ""))
    view.field("strategy", f"{strategy.get('name', '')} ({strategy.get('type', '')})")
    view.field("functions", strategy.get("functions", []))
    view.field("archive", f"{archive.get('size', '?')} bytes, sha256 {archive.get('sha256', '')}")
    stages = [[s.get("name", ""), s.get("type", "")] for s in strategy.get("stages", [])]
    out.show(view.table("stages", ["STAGE", "TYPE"], stages))
    return EXIT_OK


async def _act(client: Client, args: argparse.Namespace, out: Output) -> int:
    action = args.rollout_action
    if action == "abort":
        rollout = await client.abort_rollout(args.id, reason=args.reason)
    elif action == "promote":
        rollout = await client.promote_stage(args.id, args.stage)
    elif action == "approve":
        answer = await client.approve_stage(args.id, args.stage)
        if out.json_mode:
            out.json(answer)
            return EXIT_OK
        rollout = answer["rollout"]
    else:
        rollout = await getattr(client, f"{action}_rollout")(args.id)
    return _said(out, rollout)


def status_view(status: dict[str, Any]) -> View:
    """A rollout's counts: per status, per outcome, per stage."""
    rollout = status["rollout"]
    view = View(f"rollout {rollout['id']}: {rollout['name']}")
    view.field("state", rollout["state"] + (f" ({rollout['reason']})" if rollout["reason"] else ""))
    view.field("children", status["children"])
    view.field("lost", len(status.get("lost", [])))
    approvals = status.get("approvals", [])
    if approvals:  # the stages the policy holds for an approval
        shown = [f"{a['stage']} {'approved' if a['approved'] else 'waiting'}" for a in approvals]
        view.field("approvals", ", ".join(shown))
    statuses = status.get("statuses", {})
    view.table("children per status", ["STATUS", "CHILDREN"], list(statuses.items()))
    outcomes = status.get("outcomes", {})
    view.table("outcomes", ["OUTCOME", "CHILDREN"], list(outcomes.items()))
    stages = [
        [s["name"], ", ".join(f"{k} {v}" for k, v in s.get("counts", {}).items())]
        for s in status.get("stages", [])
    ]
    return view.table("stages", ["STAGE", "CHILDREN PER STAGE STATUS"], stages)


def what_if_view(seen: dict[str, Any]) -> View:
    """A draft's reach: counts, per area and per wave, the stages waiting for approval."""
    rollout = seen["rollout"]
    view = View(f"rollout {rollout['id']}: {rollout['name']} would reach, now")
    view.field("eligible", seen["eligible"])
    view.field("relays", seen["relays"])
    view.field("lost", seen["lost"])
    columns = ["NAME", "CHILDREN", "RELAYS", "FIRST IDS"]
    for title in ("areas", "waves"):
        rows = [
            [g["name"], g["count"], g["relay_count"], ", ".join(g["children"][:5])]
            for g in seen.get(title, [])
        ]
        view.table(title, columns, rows)
    waiting = [a["stage"] for a in seen.get("approvals", []) if not a["approved"]]
    view.field("waiting for approval", ", ".join(waiting) or "-")
    return view.field("note", seen.get("note", ""))


async def rollouts_what_if(client: Client, args: argparse.Namespace, out: Output) -> int:
    seen = await client.rollout_what_if(args.id, limit=args.limit)
    if out.json_mode:
        out.json(seen)
    else:
        out.show(what_if_view(seen))
    return EXIT_OK


def rollout_ended_well(status: dict[str, Any]) -> bool:
    """Completed, no child Failed and every outcome rolled out."""
    if status["rollout"]["state"] != "completed":
        return False
    if status.get("statuses", {}).get("Failed"):
        return False
    return all(outcome == "rolled_out" for outcome in status.get("outcomes", {}))


async def rollouts_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    status = await client.rollout_status(args.id, bbox=args.bbox)
    if out.json_mode:
        out.json(status)
    else:
        out.show(status_view(status))
    return EXIT_OK


def _child_row(c: dict[str, Any]) -> list[object]:
    stages = ", ".join(f"{name} {s['status']}" for name, s in c.get("stages", {}).items())
    return [c["child_id"], c["status"], c["outcome"], c["lost"], stages]


CHILD_COLUMNS = ["CHILD", "STATUS", "OUTCOME", "LOST", "STAGES"]


async def rollouts_children(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.rollout_children(
        args.id, status=args.status, bbox=args.bbox, limit=args.limit, offset=args.offset
    )
    out.page(page, CHILD_COLUMNS, _child_row)
    return EXIT_OK


def _event_row(e: dict[str, Any]) -> list[object]:
    where = " ".join(x for x in (e.get("child_id"), e.get("stage")) if x)
    return [e["id"], e["at"], e["kind"], where, e.get("state") or "", e["message"]]


EVENT_COLUMNS = ["ID", "AT", "KIND", "CHILD STAGE", "STATE", "MESSAGE"]


async def rollouts_events(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_rollout_events(
        args.id,
        child_id=args.child,
        stage=args.stage,
        kind=args.kind or None,
        type=args.type or None,
        after_id=args.after,
        limit=args.limit,
        offset=args.offset,
    )
    out.page(page, EVENT_COLUMNS, _event_row)
    return EXIT_OK


def _line(status: dict[str, Any]) -> str:
    rollout = status["rollout"]
    counts = ", ".join(f"{k} {v}" for k, v in status.get("statuses", {}).items()) or "no children"
    return f"rollout {rollout['id']} {rollout['state']}: {counts}"


async def rollouts_watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Show the rollout's counts until it is aborted or completed: 0 if it completed without
    failures, 1 otherwise."""
    status = await client.rollout_status(args.id)
    if out.live_capable:
        with out.live(status_view(status)) as live:
            while status["rollout"]["state"] not in ROLLOUT_FINAL:
                await asyncio.sleep(args.interval)
                status = await client.rollout_status(args.id)
                live.update(status_view(status).renderable())
    else:
        said = ""
        while True:
            line = _line(status)
            if line != said and not out.json_mode:
                out.line(line)
                said = line
            if status["rollout"]["state"] in ROLLOUT_FINAL:
                break
            await asyncio.sleep(args.interval)
            status = await client.rollout_status(args.id)
        if out.json_mode:
            out.json(status)
        else:
            out.show(status_view(status))
    return EXIT_OK if rollout_ended_well(status) else EXIT_REFUSED


def _upload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder",
        nargs="?",
        help="a release folder: strategy.yaml and fns/ (zipped here, checked first)",
    )
    parser.add_argument("--strategy", metavar="FILE", help="a strategy file (instead of a folder)")
    parser.add_argument("--archive", metavar="FILE", help="its fns.zip (with --strategy)")
    parser.add_argument(
        "--target", metavar="FILE", required=True, help="a GeoJSON file: the target area"
    )
    parser.add_argument("--name", help="the rollout's name")
    parser.add_argument("--match", choices=["intersects", "within"], help="default: intersects")
    parser.add_argument("--priority", type=int, help="higher first (default 0)")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="a JSON or YAML file: the policy (default: global_incremental)",
    )


def add_rollouts(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    text = "upload, start, follow and act on rollouts"
    parser = commands.add_parser(
        "rollouts",
        help=text,
        description=f"{text}. A rollout's bundle is uploaded with it (create, upload): there "
        "is no separate bundle resource.",
        epilog=epilog,
        formatter_class=FORMATTER,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        sub.set_defaults(handler=handler, rollout_action=name)
        return sub

    listing = action("list", rollouts_list, "list the rollouts, by priority then creation")
    listing.add_argument("--state", action="append", help="only in this state (repeatable)")
    add_paging(listing)
    action("show", rollouts_show, "a rollout and its bundle").add_argument("id")
    create = action("create", rollouts_create, "upload a bundle and start its rollout")
    _upload_options(create)
    create.add_argument("--draft", action="store_true", help="do not start it (as upload)")
    create.add_argument(
        "--after-release",
        metavar="RELEASE_ID",
        help="wait for this data release: start when it is published, abort if it fails or "
        "is canceled",
    )
    _upload_options(action("upload", rollouts_upload, "upload a bundle: a draft rollout"))
    for name, help_text in (
        ("start", "start a draft"),
        ("pause", "pause an active rollout"),
        ("resume", "resume a paused rollout"),
        ("abort", "abort a rollout: its children roll back"),
    ):
        sub = action(name, _act, help_text)
        sub.add_argument("id", help="the rollout's id")
        if name == "abort":
            sub.add_argument("--reason", help="why")
    promote = action(
        "promote", _act, "end a WaitForSignal stage now, whatever its barrier's condition"
    )
    promote.add_argument("id", help="the rollout's id")
    promote.add_argument("stage", help="the stage's name")
    approve = action(
        "approve", _act, "approve a stage the rollout's policy names in approvals (an admin's)"
    )
    approve.add_argument("id", help="the rollout's id")
    approve.add_argument("stage", help="the stage's name")
    what_if = action(
        "what-if", rollouts_what_if, "which registered children a draft would reach now"
    )
    what_if.add_argument("id", help="the draft rollout's id")
    what_if.add_argument("--limit", type=int, help="the most ids listed per group")
    status = action("status", rollouts_status, "counts per status, outcome and stage")
    status.add_argument("id", help="the rollout's id")
    status.add_argument("--bbox", help="only children in minLon,minLat,maxLon,maxLat")
    children = action("children", rollouts_children, "per child: status, outcome, stages")
    children.add_argument("id", help="the rollout's id")
    children.add_argument("--status", help="only children in this status (No, Todo, Doing ...)")
    children.add_argument("--bbox", help="only children in minLon,minLat,maxLon,maxLat")
    add_paging(children)
    events = action("events", rollouts_events, "a rollout's event log, oldest first")
    events.add_argument("id", help="the rollout's id")
    events.add_argument("--child", help="only events of this child")
    events.add_argument("--stage", help="only events of this stage")
    events.add_argument("--kind", action="append", help="transition, user_action or policy")
    events.add_argument("--type", action="append", help="info, warning or error (repeatable)")
    events.add_argument("--after", metavar="EVENT_ID", type=int, help="only later events")
    add_paging(events)
    watch = action(
        "watch",
        rollouts_watch,
        "show a rollout's counts live until it is aborted or completed: exit 0 if it "
        "completed without failures, 1 otherwise",
    )
    watch.add_argument("id", help="the rollout's id")
    add_watching(watch)
    add_interventions(action)  # exclude, retry (.intervention_commands)
