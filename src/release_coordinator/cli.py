"""The ``release-coordinator`` command (also ``python -m release_coordinator``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from release_coordinator import __version__

__all__ = ["DEFAULT_DB", "main"]

#: The database of ``release-coordinator db``: a SQLite file in the working directory.
DEFAULT_DB = "sqlite:///release-coordinator.db"


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

    diagrams = commands.add_parser("diagrams", help="print the state machines as mermaid diagrams")
    diagrams.add_argument("machine", nargs="?", choices=["release", "task"], default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    if args.command == "diagrams":
        from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE

        machines = {"release": RELEASE_MACHINE, "task": TASK_MACHINE}
        for name, machine in machines.items():
            if args.machine in (None, name):
                print(machine.mermaid())
        return 0
    _parser().print_help()
    return 2


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
