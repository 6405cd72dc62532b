"""``rc rollouts exclude`` and ``rc rollouts retry``: the operator's interventions on a
rollout (:meth:`Client.exclude_child <release_coordinator.client.http.Client.exclude_child>`,
:meth:`Client.retry_rollout <release_coordinator.client.http.Client.retry_rollout>`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from release_coordinator.client.exits import EXIT_OK
from release_coordinator.client.http import Client
from release_coordinator.client.render import Output

__all__ = ["add_interventions"]


async def rollouts_exclude(client: Client, args: argparse.Namespace, out: Output) -> int:
    state = await client.exclude_child(args.id, args.child, reason=args.reason)
    if out.json_mode:
        out.json(state)
    else:
        out.line(
            f"child {state['child_id']} of rollout {args.id}: {state['status']}, "
            f"{state['outcome']} (never offered it again)"
        )
    return EXIT_OK


async def rollouts_retry(client: Client, args: argparse.Namespace, out: Output) -> int:
    answer = await client.retry_rollout(args.id, children=args.child or None)
    if out.json_mode:
        out.json(answer)
    else:
        rollout, retried = answer["rollout"], answer["retried"]
        out.line(
            f"rollout {rollout['id']} ({rollout['name']}): {rollout['state']}; offered again "
            f"to {len(retried)}: {', '.join(retried)}"
        )
    return EXIT_OK


def add_interventions(action: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """The commands, through ``rollouts``' ``action(name, handler, help)``."""
    exclude = action(
        "exclude",
        rollouts_exclude,
        "exclude a child from a rollout: never offered it again; it rolls back if it runs it",
    )
    exclude.add_argument("id", help="the rollout's id")
    exclude.add_argument("child", help="the child's id")
    exclude.add_argument("--reason", help="why (for the event log)")
    retry = action(
        "retry",
        rollouts_retry,
        "offer a rollout again to the children that failed or timed out (a completed one "
        "runs again)",
    )
    retry.add_argument("id", help="the rollout's id")
    retry.add_argument(
        "--child", action="append", help="only this child (repeatable; default: every one)"
    )
