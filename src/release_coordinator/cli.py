"""The ``release-coordinator`` command (also ``python -m release_coordinator``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from release_coordinator import __version__

__all__ = ["main"]


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
            workdir=args.workdir, studies=args.studies, records=args.records, fail=args.fail
        )
    if args.command == "diagrams":
        from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE

        machines = {"release": RELEASE_MACHINE, "task": TASK_MACHINE}
        for name, machine in machines.items():
            if args.machine in (None, name):
                print(machine.mermaid())
        return 0
    _parser().print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
