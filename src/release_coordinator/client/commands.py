"""``release-coordinator services|releases|notes|studies|rollouts ...``: the operator's
commands over HTTP.

:func:`add_client_commands` adds the command groups to the ``release-coordinator`` parser;
:func:`run` runs the one parsed. The server is ``--url`` (default ``$RC_URL``, else
``http://127.0.0.1:8000``); the token is ``$RC_TOKEN``, never an option and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from release_coordinator.client.exits import EXIT_CODES, exit_code
from release_coordinator.errors import ReleaseCoordinatorError

__all__ = ["GROUPS", "add_client_commands", "common_options", "run"]

#: The command groups this module adds.
GROUPS = ("services", "releases", "notes", "studies", "rollouts")

Handler = Callable[[Any, argparse.Namespace, Any], Awaitable[int]]


def common_options() -> argparse.ArgumentParser:
    """The options of every action: ``--url``, ``--json``, ``--timeout``."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument(
        "--url",
        default=None,
        help="the server's base URL (default: $RC_URL, else http://127.0.0.1:8000)",
    )
    group.add_argument(
        "--json", action="store_true", help="print the server's JSON on stdout instead of text"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="the time-out of each request (default: %(default)g)",
    )
    return common


def add_client_commands(commands: Any) -> None:
    """Add ``services``, ``releases``, ``notes``, ``studies`` and ``rollouts`` to ``commands``
    (the subparsers of the ``release-coordinator`` parser)."""
    from release_coordinator.client import (
        coordinator_commands,
        notes_commands,
        rollout_commands,
        webhook_commands,
    )

    common = common_options()
    coordinator_commands.add_services(commands, common, EXIT_CODES)
    coordinator_commands.add_releases(commands, common, EXIT_CODES)
    webhook_commands.add_webhooks(commands, common, EXIT_CODES)
    notes_commands.add_notes(commands, common, EXIT_CODES)
    notes_commands.add_studies(commands, common, EXIT_CODES)
    rollout_commands.add_rollouts(commands, common, EXIT_CODES)


def run(args: argparse.Namespace) -> int:
    """Run the parsed action: its exit status; a refusal's message on stderr, one line."""
    from release_coordinator.client.http import DEFAULT_URL, Client
    from release_coordinator.client.render import Output

    handler: Handler = args.handler
    url = args.url or os.environ.get("RC_URL", "").strip() or DEFAULT_URL
    token = os.environ.get("RC_TOKEN", "").strip() or None
    out = Output(json_mode=args.json)

    async def go() -> int:
        async with Client(url, token=token, timeout=args.timeout) as client:
            return await handler(client, args, out)

    try:
        return asyncio.run(go())
    except ReleaseCoordinatorError as error:
        print(f"error: {' '.join(error.message.split())}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        return 130
