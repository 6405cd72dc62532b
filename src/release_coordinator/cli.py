"""The ``release-coordinator`` command (also ``python -m release_coordinator``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from release_coordinator._version import __version__
from release_coordinator.coordinator.config import CoordinatorConfig, RetryPolicy
from release_coordinator.storage import DEFAULT_DB

if TYPE_CHECKING:
    from release_coordinator.rollout.geo import Area

__all__ = ["main"]

# The defaults of serve's settings (release_coordinator.server.serve, which needs the server
# extra, has the same: a test keeps them equal).
_POLL_INTERVAL = CoordinatorConfig().poll_interval
_RETRY_ATTEMPTS = RetryPolicy().attempts
_LOST_AFTER = 60.0
_TICK_INTERVAL = 1.0
_LEASE_SECONDS = 15.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="release-coordinator",
        description="Coordinate synchronized data releases and staged edge rollouts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run one complete data release across three in-process task services"
    )
    demo.add_argument("--studies", type=int, default=4, help="studies in the release (4)")
    demo.add_argument("--records", type=int, default=400, help="records per study (400)")
    demo.add_argument("--workdir", help="keep the services' files here (default: a temp dir)")
    demo.add_argument(
        "--fail",
        metavar="SERVICE",
        help="make this service fail while staging (data-portal, search-index, file-server)",
    )
    demo.add_argument(
        "--db",
        metavar="URL",
        help="the store: a database URL, or 'memory' (default: a SQLite file in the work dir)",
    )

    db = commands.add_parser("db", help="manage the schema of a SQL store")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for action, text in (
        ("upgrade", "create the schema, or upgrade an older one to this version's"),
        ("check", "print the schema version; exit 1 unless this version can use it"),
    ):
        sub = db_commands.add_parser(action, help=text)
        sub.add_argument(
            "--db",
            metavar="URL",
            default=DEFAULT_DB,
            help=f"sqlite:///PATH or postgresql://... (default: {DEFAULT_DB})",
        )

    simulate = commands.add_parser(
        "simulate",
        help="run a rollout on a simulated fleet (a top manager, relays per region, leaves)",
        description="Run a rollout on a simulated fleet in real time: a top manager, a relay "
        "per region of a grid over Europe, and leaves spread over the regions, each playing a "
        "two-stage WaitForSignal strategy with synthetic metrics. Prints progress per region "
        "and the outcome; exits 0 when the failing regions rolled back and the others out.",
    )
    simulate.add_argument("--regions", type=int, default=4, help="regions r1..rN (4)")
    simulate.add_argument("--leaves", type=int, default=200, help="leaves in all (200)")
    simulate.add_argument(
        "--fail",
        metavar="REGION",
        action="append",
        default=[],
        help="make the new version fail in this region (r1, r2 ...); repeatable",
    )
    simulate.add_argument(
        "--poll-interval", type=float, default=0.5, help="seconds between polls (0.5)"
    )
    simulate.add_argument(
        "--stage-seconds", type=float, default=4.0, help="minDuration of each stage (4)"
    )
    simulate.add_argument("--levels", type=int, default=3, help="depth of the tree (3)")
    simulate.add_argument("--relays", type=int, default=1, help="relays per region (1)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (0)")
    simulate.add_argument(
        "--progress-every", type=float, default=2.0, help="seconds between progress lines (2)"
    )

    serve = commands.add_parser(
        "serve",
        help="serve the Coordinator's API and the edge-rollout protocols over HTTP",
        description="Serve the Coordinator's API (task services, releases, tasks, events,\n"
        "task-service callbacks) and a RolloutManager's (child protocol, operator API)\n"
        "from one process (granian or uvicorn), logging one line per request, until\n"
        "SIGTERM or SIGINT (then exit 0). Tokens come from environment variables, never\n"
        "from options.",
        epilog="environment variables:\n"
        "  RC_OPERATOR_TOKENS     operator tokens for both APIs: tok1,tok2 or alice=tok1,bob=tok2\n"
        "                         (required unless --allow-anonymous)\n"
        "  RC_CALLBACK_TOKENS     task-service callback tokens: service=token,... (service\n"
        "                         name or id); each may only report its own service's tasks\n"
        "  RC_TASK_SERVICE_TOKEN  the bearer token sent to task services\n"
        "  RC_PARENT_TOKEN        the bearer token a relay (--parent) sends to its parent\n"
        "  RC_DB                  the default of --db\n"
        "Token values are never logged.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="sqlite:///PATH (one process only), postgresql://USER@HOST/DB, or 'memory' "
        f"(nothing kept); default: $RC_DB, else {DEFAULT_DB} (a file in the working directory)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=8000, help="the port to listen on; 0: any free port (8000)"
    )
    serve.add_argument(
        "--server",
        choices=["granian", "uvicorn"],
        default=None,
        help="the HTTP server: granian (a Rust server, the faster) or uvicorn; both come with "
        "the server extra (default: granian when installed, else uvicorn)",
    )
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="the level of the log on stderr; the per-request lines are INFO (default: info)",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line (time, level, logger, message; request "
        "lines also request_id, method, route, status, duration_ms, client) (default: text)",
    )
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve GET /metrics without a token (by default it wants an operator token)",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="start without RC_OPERATOR_TOKENS: every request may operate "
        "(tests and trusted networks only)",
    )
    serve.add_argument(
        "--owner",
        metavar="NAME",
        help="the coordinator's name in its release leases (default: a new random id); a "
        "process restarted under the same name resumes its releases at once",
    )
    serve.add_argument(
        "--child-tokens",
        action="store_true",
        help="issue each child a token at its first poll and require it from then on "
        "(original agents send none: leave it off for them)",
    )
    serve.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        type=float,
        default=_POLL_INTERVAL,
        help="the coordinator's seconds between two status rounds of the task services of a "
        "staging or publishing release (default: %(default)g)",
    )
    serve.add_argument(
        "--retry-attempts",
        metavar="N",
        type=int,
        default=_RETRY_ATTEMPTS,
        help="the coordinator's tries of a request to a task service that meets transient "
        "trouble (refused, time-out, 502, 504), the first included; 1: no retry "
        "(default: %(default)d)",
    )
    serve.add_argument(
        "--lost-after",
        metavar="SECONDS",
        type=float,
        default=_LOST_AFTER,
        help="a child that has not polled for this long is lost and no longer holds up "
        "stage barriers (default: %(default)g)",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="serve from N processes sharing the port and a PostgreSQL database (--db "
        "postgresql://...); the rollout manager's periodic work runs in one of them at a "
        "time (default: %(default)d)",
    )
    serve.add_argument(
        "--lease-seconds",
        metavar="SECONDS",
        type=float,
        default=_LEASE_SECONDS,
        help="how long a process's hold on its work lasts without renewal (the coordinator's "
        "releases, the rollout manager's periodic work): another process takes the work over "
        "that long after one dies (default: %(default)g)",
    )
    serve.add_argument(
        "--tick-interval",
        metavar="SECONDS",
        type=float,
        default=_TICK_INTERVAL,
        help="seconds between two ticks of the rollout manager (barrier time-outs, lost "
        "children); a relay also polls its parent and reports upward at each "
        "(default: %(default)g)",
    )
    serve.add_argument(
        "--webhook-interval",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="seconds between two rounds of webhook deliveries (each round sends what is due; "
        "0: this process sends none, another one over the same database does) "
        "(default: %(default)g)",
    )
    relay = serve.add_argument_group(
        "relay mode", "serve the rollout half as the child of another server (a tree of servers)"
    )
    relay.add_argument(
        "--parent",
        metavar="URL",
        help="the parent's base URL (http(s)://HOST[:PORT][/PREFIX], where it serves the "
        "child protocol): the manager becomes a relay that adopts the parent's releases, "
        "offers them to its own children and reports upward (default: none, a top server); "
        "the token it sends comes from RC_PARENT_TOKEN",
    )
    relay.add_argument(
        "--relay-id",
        metavar="ID",
        default="",
        help="the relay's id at its parent; give one so that a restart is the same child to "
        "the parent (default: the id the parent assigns at the first poll, not kept over a "
        "restart)",
    )
    relay.add_argument(
        "--area",
        metavar="FILE",
        help="a GeoJSON file (Polygon, MultiPolygon or a Feature of one): the relay's own "
        "area, reported to the parent (default: the union of its children's areas; a relay "
        "without children then waits for one before it polls)",
    )

    diagrams = commands.add_parser("diagrams", help="print the state machines as mermaid diagrams")
    diagrams.add_argument("machine", nargs="?", choices=["release", "task"], default=None)

    from release_coordinator.client.commands import add_client_commands

    add_client_commands(commands)  # services, releases, rollouts: a client of serve over HTTP
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    if args.command == "serve" and not args.verbose:
        level = logging.getLevelName(args.log_level.upper())
    from release_coordinator.logs import configure_logging

    configure_logging(level, args.log_format if args.command == "serve" else "text")
    if args.command == "demo":
        from release_coordinator.demo import run_demo

        if args.studies < 1 or args.records < 1:
            print("--studies and --records must be at least 1", file=sys.stderr)
            return 2
        return run_demo(
            workdir=args.workdir,
            studies=args.studies,
            records=args.records,
            fail=args.fail,
            db=args.db,
        )
    if args.command == "db":
        return _db(args.db_command, args.db)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "diagrams":
        from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE

        machines = {"release": RELEASE_MACHINE, "task": TASK_MACHINE}
        for name, machine in machines.items():
            if args.machine in (None, name):
                print(machine.mermaid())
        return 0
    if getattr(args, "handler", None) is not None:  # services, releases, rollouts
        from release_coordinator.client.commands import run

        return run(args)
    _parser().print_help()
    return 2


def _simulate(args: argparse.Namespace) -> int:
    """``release-coordinator simulate``: 0 when the outcome is the expected one, else 1."""
    import asyncio

    from release_coordinator.errors import ReleaseCoordinatorError
    from release_coordinator.rollout.simulate import FleetConfig, simulate

    try:
        config = FleetConfig(
            grid=args.regions,
            leaves=args.leaves,
            failing=tuple(args.fail),
            poll_interval=args.poll_interval,
            stage_seconds=args.stage_seconds,
            levels=args.levels,
            relays_per_region=args.relays,
            seed=args.seed,
            progress_every=args.progress_every,
        )
    except ReleaseCoordinatorError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    result = asyncio.run(simulate(config, out=sys.stdout))
    if result.as_expected:
        print("outcome as expected: the failing regions rolled back, the others rolled out")
        return 0
    print("outcome NOT as expected (see the table)")
    return 1


def _serve(args: argparse.Namespace) -> int:
    """``release-coordinator serve``: 0 after SIGTERM/SIGINT, 2 for unusable options or
    variables, 1 when a store cannot be opened or the server cannot start."""
    import os

    from release_coordinator.errors import ConfigurationError, ReleaseCoordinatorError

    try:
        from release_coordinator.server import serve
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not args.verbose and args.log_level != "debug":
        # the coordinator's own requests to task services: not one line each
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    db = args.db or os.environ.get("RC_DB", "").strip() or DEFAULT_DB
    try:
        area = area_from_file(args.area) if args.area is not None else None
        return serve.serve(
            db=db,
            host=args.host,
            port=args.port,
            allow_anonymous=args.allow_anonymous,
            child_tokens=args.child_tokens,
            log_level="debug" if args.verbose else args.log_level,
            owner=args.owner,
            poll_interval=args.poll_interval,
            retry_attempts=args.retry_attempts,
            lost_after=args.lost_after,
            tick_interval=args.tick_interval,
            lease_seconds=args.lease_seconds,
            workers=args.workers,
            log_format=args.log_format,
            parent=args.parent,
            relay_id=args.relay_id,
            area=area,
            metrics_public=args.metrics_public,
            server=args.server,
            webhook_interval=args.webhook_interval,
        )
    except ConfigurationError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except ReleaseCoordinatorError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the server took over the signals
        return 130


def area_from_file(path: str | Path) -> Area:
    """The area in the GeoJSON file at ``path`` (a Polygon, a MultiPolygon, or a Feature of
    one), for ``serve --area``; ConfigurationError naming the option and the file otherwise."""
    import json

    from release_coordinator.errors import ConfigurationError, GeoJSONError
    from release_coordinator.rollout.geo import Area

    where = f"--area {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigurationError(f"{where}: cannot read it: {reason}") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ConfigurationError(f"{where}: not JSON: {error}") from None
    try:
        return Area.from_geojson(document, path="area")
    except GeoJSONError as error:
        problems = "; ".join(f"{at}: {what}" for at, what in error.problems)
        raise ConfigurationError(f"{where}: not a valid area: {problems}") from None


def _db(action: str, url: str) -> int:
    """``release-coordinator db upgrade|check --db URL``."""
    import asyncio

    from release_coordinator.errors import ReleaseCoordinatorError

    try:
        from release_coordinator.storage import sql
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        if action == "upgrade":
            before, after = asyncio.run(sql.upgrade(url))
            if before is None:
                print(f"created schema version {after} at {_shown(url)}")
            elif before == after:
                print(f"schema version {after} at {_shown(url)} is current: nothing to do")
            else:
                print(f"upgraded {_shown(url)} from schema version {before} to {after}")
        else:
            version = asyncio.run(sql.check(url))
            print(f"schema version {version} at {_shown(url)}: ok")
    except ReleaseCoordinatorError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    return 0


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
