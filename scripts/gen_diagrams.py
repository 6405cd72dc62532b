"""Write the parts of docs/ that are generated from the code, or check that they are current.

Generated blocks sit between marker comments in hand-written pages::

    <!-- BEGIN GENERATED: release-diagram -->
    ...replaced on every run...
    <!-- END GENERATED: release-diagram -->

- ``docs/reference/state-machines.md``: mermaid diagrams (``MachineSpec.mermaid()``, from
  transitions' GraphMachine) and transition tables of ``RELEASE_MACHINE``, ``TASK_MACHINE``,
  ``CHILD_RELEASE_MACHINE`` and ``STAGE_MACHINE``;
- ``docs/reference/errors.md``: the exception tree drawn in the docstring of
  ``release_coordinator.errors``.

Usage::

    python scripts/gen_diagrams.py           # rewrite the pages that are out of date
    python scripts/gen_diagrams.py --check   # exit 1 (and name them) if any page is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if str(ROOT / "src") not in sys.path:  # document this source tree, not an installed copy
    sys.path.insert(0, str(ROOT / "src"))

from release_coordinator import errors  # noqa: E402
from release_coordinator.fsm.base import MachineSpec  # noqa: E402
from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE  # noqa: E402
from release_coordinator.fsm.rollout import CHILD_RELEASE_MACHINE, STAGE_MACHINE  # noqa: E402

__all__ = ["PAGES", "main", "outdated", "render", "render_page", "write"]

_BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def mermaid_block(spec: MachineSpec) -> str:
    """The machine's mermaid diagram as a fenced block."""
    return f"```mermaid\n{spec.mermaid()}```\n"


def transition_table(spec: MachineSpec) -> str:
    """Every declared transition as a markdown table (the diagram in words)."""
    rows = [
        "| trigger | from | to |",
        "|---|---|---|",
        *(
            f"| `{t.trigger}` | {', '.join(f'`{s}`' for s in t.sources)} | `{t.dest}` |"
            for t in spec.transitions
        ),
    ]
    final = ", ".join(f"`{s}`" for s in spec.states if s in spec.final)
    return (
        "\n".join(rows)
        + f"\n\nInitial state: `{spec.initial}`. Final states (no trigger leaves them): {final}.\n"
    )


def error_table() -> str:
    """Every exception class with its base, ``code`` and ``http_status``."""
    rows = ["| class | base | `code` | `http_status` |", "|---|---|---|---|"]
    for name, cls in vars(errors).items():  # definition order: the order of the tree
        if name not in errors.__all__ or not (
            isinstance(cls, type) and issubclass(cls, errors.ReleaseCoordinatorError)
        ):
            continue
        base = cls.__mro__[1].__name__
        rows.append(f"| `{name}` | `{base}` | `{cls.code}` | {cls.http_status} |")
    return "\n".join(rows) + "\n"


def error_tree() -> str:
    """The drawing of the exception tree in ``release_coordinator.errors``' docstring."""
    doc = errors.__doc__ or ""
    _, found, rest = doc.partition("::\n")
    if not found:
        raise ValueError("release_coordinator.errors' docstring has no '::' drawing")
    lines = []
    for line in rest.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line[4:])
    drawing = "\n".join(lines).strip("\n")
    return f"```text\n{drawing}\n```\n"


#: page (relative to docs/) -> block name -> generator
PAGES: Mapping[str, Mapping[str, Callable[[], str]]] = {
    "reference/state-machines.md": {
        "release-diagram": lambda: mermaid_block(RELEASE_MACHINE),
        "release-table": lambda: transition_table(RELEASE_MACHINE),
        "task-diagram": lambda: mermaid_block(TASK_MACHINE),
        "task-table": lambda: transition_table(TASK_MACHINE),
        "child-release-diagram": lambda: mermaid_block(CHILD_RELEASE_MACHINE),
        "child-release-table": lambda: transition_table(CHILD_RELEASE_MACHINE),
        "stage-diagram": lambda: mermaid_block(STAGE_MACHINE),
        "stage-table": lambda: transition_table(STAGE_MACHINE),
    },
    "reference/errors.md": {
        "error-tree": error_tree,
        "error-table": error_table,
    },
}


def render(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with the body of every named generated block replaced.

    Raises ValueError when a block of ``blocks`` has no markers in ``text``, or ``text`` has
    markers for a block that ``blocks`` does not know.
    """
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise ValueError(f"unknown generated block {name!r}")
        seen.add(name)
        return match["begin"] + blocks[name] + match["end"]

    result = _BLOCK.sub(replace, text)
    missing = sorted(set(blocks) - seen)
    if missing:
        raise ValueError(f"no markers for generated block(s) {', '.join(missing)}")
    return result


def render_page(page: str, docs: Path = DOCS) -> tuple[str, str]:
    """The page's current text and the text it should have."""
    current = (docs / page).read_text(encoding="utf-8")
    blocks = {name: make() for name, make in PAGES[page].items()}
    return current, render(current, blocks)


def outdated(docs: Path = DOCS) -> list[str]:
    """Pages whose generated blocks differ from what the code generates now."""
    stale = []
    for page in PAGES:
        current, wanted = render_page(page, docs)
        if current != wanted:
            stale.append(page)
    return stale


def write(docs: Path = DOCS) -> list[str]:
    """Rewrite the pages that are out of date; returns them."""
    changed = []
    for page in PAGES:
        current, wanted = render_page(page, docs)
        if current != wanted:
            (docs / page).write_text(wanted, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a page is out of date"
    )
    args = parser.parse_args(argv)
    try:
        return _run(check=args.check)
    except (OSError, ValueError) as error:
        print(f"gen_diagrams: {error}", file=sys.stderr)
        return 2


def _run(*, check: bool) -> int:
    if check:
        stale = outdated()
        for page in stale:
            print(f"docs/{page} is out of date: run python scripts/gen_diagrams.py")
        return 1 if stale else 0
    for page in write():
        print(f"wrote docs/{page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
