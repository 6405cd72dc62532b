"""``release-coordinator notes ...`` and ``studies ...``: release notes and studies over HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from release_coordinator.client.coordinator_commands import _action, _group, add_paging
from release_coordinator.client.exits import EXIT_OK
from release_coordinator.client.http import Client
from release_coordinator.client.render import Output, View
from release_coordinator.errors import ConfigurationError

__all__ = ["add_notes", "add_studies", "note_text"]

NOTE_COLUMNS = ["ID", "RELEASE", "STUDY", "AUTHOR", "UPDATED", "FIRST LINE"]
STUDY_COLUMNS = ["ID", "RELEASES", "LATEST", "LAST PUBLISHED", "PUBLISHED AT"]


def note_text(args: argparse.Namespace) -> str:
    """The note's text: the argument, or the file of ``--file`` (``-``: standard input)."""
    if (args.text is None) == (args.file is None):
        raise ConfigurationError("give the note's text, or --file PATH (- for standard input)")
    if args.text is not None:
        return str(args.text)
    if args.file == "-":
        return sys.stdin.read()
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"cannot read the note from {args.file}: {error}") from None


def _first_line(text: str) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= 60 else line[:59] + "…"


def _note_row(n: dict[str, Any]) -> list[object]:
    return [
        n["id"],
        n["release_id"],
        n["study_id"],
        n["author"],
        n["updated_at"],
        _first_line(n["text"]),
    ]


def _said_note(out: Output, note: dict[str, Any], what: str) -> int:
    if out.json_mode:
        out.json(note)
    else:
        about = f" on study {note['study_id']}" if note["study_id"] else ""
        out.line(f"note {note['id']} {what} (release {note['release_id']}{about})")
    return EXIT_OK


async def notes_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.release_id is None and not args.study:
        raise ConfigurationError("give a release's id, or --study STUDY_ID")
    if args.release_id is None:
        page = await client.list_study_notes(args.study, limit=args.limit, offset=args.offset)
    else:
        page = await client.list_notes(
            args.release_id, study_id=args.study, limit=args.limit, offset=args.offset
        )
    out.page(page, NOTE_COLUMNS, _note_row)
    return EXIT_OK


async def notes_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    note = await client.get_note(args.id)
    if out.json_mode:
        out.json(note)
        return EXIT_OK
    view = View(f"note {note['id']}")
    for name in ("release_id", "study_id", "author", "created_at", "updated_at"):
        view.field(name, note[name])
    out.show(view)
    out.line("")
    out.line(note["text"])
    return EXIT_OK


async def notes_add(client: Client, args: argparse.Namespace, out: Output) -> int:
    note = await client.add_note(
        args.release_id, note_text(args), study_id=args.study, author=args.author
    )
    return _said_note(out, note, "added")


async def notes_edit(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _said_note(out, await client.edit_note(args.id, note_text(args)), "edited")


async def notes_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    await client.delete_note(args.id)
    if not out.json_mode:
        out.line(f"deleted note {args.id}")
    return EXIT_OK


def _add_text(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="the note, in Markdown (or --file)")
    parser.add_argument("--file", metavar="PATH", help="read the note from a file (- for stdin)")


def add_notes(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    actions = _group(commands, "notes", "write and read release notes (Markdown)", epilog)
    listing = _action(
        actions, "list", notes_list, "a release's notes (or, with --study only, a study's)", common
    )
    listing.add_argument("release_id", nargs="?", help="the release's id")
    listing.add_argument("--study", help="only the notes on this study")
    add_paging(listing)
    show = _action(actions, "show", notes_show, "one note and its text", common)
    show.add_argument("id", help="the note's id")
    add = _action(actions, "add", notes_add, "add a note to a release", common)
    add.add_argument("release_id", help="the release's id")
    _add_text(add)
    add.add_argument("--study", help="a study of the release the note is about")
    add.add_argument("--author", help="default: the name of the operator's token")
    edit = _action(actions, "edit", notes_edit, "replace a note's text", common)
    edit.add_argument("id", help="the note's id")
    _add_text(edit)
    delete = _action(actions, "delete", notes_delete, "delete a note", common)
    delete.add_argument("id", help="the note's id")


# -- studies ---------------------------------------------------------------------------------


def _study_row(s: dict[str, Any]) -> list[object]:
    return [
        s["id"],
        len(s["release_ids"]),
        s["latest_version"],
        s["last_published_version"],
        s["last_published_at"] or "",
    ]


async def studies_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = await client.list_studies(limit=args.limit, offset=args.offset)
    out.page(page, STUDY_COLUMNS, _study_row)
    return EXIT_OK


async def studies_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    study = await client.get_study(args.id)
    notes = await client.list_study_notes(args.id, limit=1000)
    if out.json_mode:
        out.json({"study": study, "notes": notes["items"]})
        return EXIT_OK
    view = View(f"study {study['id']}")
    for name in (
        "created_at",
        "latest_release_id",
        "latest_version",
        "last_published_release_id",
        "last_published_version",
        "last_published_at",
        "release_ids",
    ):
        view.field(name, study[name])
    out.show(view.table("notes", NOTE_COLUMNS, [_note_row(n) for n in notes["items"]]))
    return EXIT_OK


def add_studies(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    actions = _group(commands, "studies", "the studies the releases name", epilog)
    listing = _action(actions, "list", studies_list, "every study, newest first", common)
    add_paging(listing)
    show = _action(
        actions, "show", studies_show, "a study: its releases, versions and notes", common
    )
    show.add_argument("id", help="the study's id")
