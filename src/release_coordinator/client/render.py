"""What the commands print: tables, fields and live views, with rich when it is installed
(the ``cli`` extra), as plain aligned text otherwise; ``--json`` prints the JSON instead.

Every value shown comes from the server: rich draws it as text (markup off), never as markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["Output", "View", "plain_table", "rich_available"]

Row = Sequence[object]


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return " ".join(str(value).split()) if "\n" in str(value) else str(value)


def plain_table(columns: Sequence[str], rows: Sequence[Row]) -> str:
    """``rows`` under ``columns``, each column as wide as its widest cell, two blanks apart."""
    cells = [[_cell(c) for c in columns]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class View:
    """Something to show: fields (``name: value``) and tables, each with a title."""

    def __init__(self, title: str = "") -> None:
        self.title = title
        self.fields: list[tuple[str, object]] = []
        self.tables: list[tuple[str, list[str], list[Row]]] = []

    def field(self, name: str, value: object) -> View:
        self.fields.append((name, value))
        return self

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Row]) -> View:
        self.tables.append((title, list(columns), list(rows)))
        return self

    def text(self) -> str:
        parts: list[str] = []
        if self.title:
            parts.append(self.title)
        if self.fields:
            width = max(len(name) for name, _ in self.fields)
            parts.append(
                "\n".join(f"{name + ':':<{width + 1}} {_cell(v)}" for name, v in self.fields)
            )
        for title, columns, rows in self.tables:
            block = plain_table(columns, rows) if rows else "(none)"
            parts.append(f"{title}\n{block}" if title else block)
        return "\n\n".join(parts)

    def renderable(self) -> Any:
        """The view as a rich renderable (a Group of a fields grid and tables)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        parts: list[Any] = []
        if self.title:
            parts.append(Text(self.title, style="bold"))
        if self.fields:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            for name, value in self.fields:
                grid.add_row(Text(name), Text(_cell(value)))
            parts.append(grid)
        for title, columns, rows in self.tables:
            table = Table(title=Text(title) if title else None, title_justify="left")
            for column in columns:
                table.add_column(Text(column), no_wrap=True)
            for row in rows:
                table.add_row(*(Text(_cell(c)) for c in row))
            parts.append(table)
        return Group(*parts)


class Output:
    """stdout for a command: ``--json`` or human; rich when available (``use_rich``)."""

    def __init__(
        self, *, json_mode: bool, use_rich: bool | None = None, stream: IO[str] | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stream = stream if stream is not None else sys.stdout
        self.use_rich = rich_available() if use_rich is None else use_rich
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            terminal = self.stream.isatty()
            self._console = Console(
                file=self.stream,
                markup=False,
                highlight=False,
                emoji=False,
                # a pipe gets whole lines (no wrapping at 80 columns), and no colours
                width=None if terminal else 4000,
                no_color=not terminal,
            )
        return self._console

    @property
    def live_capable(self) -> bool:
        """Whether a live view can redraw in place (rich, on a terminal)."""
        return self.use_rich and not self.json_mode and self.stream.isatty()

    def json(self, value: Any) -> None:
        self.stream.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def show(self, view: View) -> None:
        if not self.use_rich:
            self.line(view.text())
        elif self.stream.isatty():
            self.console.print(view.renderable())
        else:  # a pipe: without the blanks that pad each line to the widest
            with self.console.capture() as captured:
                self.console.print(view.renderable())
            self.line("\n".join(line.rstrip() for line in captured.get().splitlines()))

    def table(self, columns: Sequence[str], rows: Sequence[Row], *, more: int | None) -> None:
        """A listing; ``more``: the next page's offset, if any (said on stderr)."""
        self.show(View().table("", columns, rows))
        if more is not None:
            print(f"more: --offset {more}", file=sys.stderr)

    def page(
        self, page: Mapping[str, Any], columns: Sequence[str], row: Callable[[Any], Row]
    ) -> None:
        """A page of a list as the server sent it: the JSON, or a :meth:`table` of ``row`` of
        each of its ``items``, with its ``next_offset``."""
        if self.json_mode:
            self.json(page)
        else:
            self.table(columns, [row(item) for item in page["items"]], more=page.get("next_offset"))

    @contextmanager
    def live(self, view: View) -> Iterator[Any]:
        """A rich Live display of ``view``; ``.update(view.renderable())`` redraws it."""
        from rich.live import Live

        with Live(view.renderable(), console=self.console, refresh_per_second=4) as live:
            yield live
