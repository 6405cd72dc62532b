"""The Coordinator's release notes and studies.

A *release note* is Markdown text on one release, about the release as a whole or about one
of the studies it names: what changed, what to look out for. Notes are added, edited and
deleted at any time (a published release's notes too: the notes are about the data, and may
need a correction later); each change is logged (an event of kind ``note``).

A *study* is read from the releases that name it (:class:`~release_coordinator.coordinator.
models.Study`): it appears with the first release that names it and lists its releases, its
latest version and its last published one.

:class:`NotesMixin` is a part of :class:`~release_coordinator.coordinator.engine.Coordinator`.
"""

from __future__ import annotations

from release_coordinator.coordinator.events import EventsMixin, new_event
from release_coordinator.coordinator.models import EventKind, ReleaseNote, Study, new_id
from release_coordinator.errors import Problem, ValidationError
from release_coordinator.schemas import MAX_TEXT

__all__ = ["MAX_NOTE", "NotesMixin", "note_problems"]

#: The longest note accepted, in characters.
MAX_NOTE = 20_000


def _unprintable(value: str, multiline: bool) -> bool:
    allowed = "\n\t\r" if multiline else ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return any(not c.isprintable() and c not in allowed for c in value)


def note_problems(text: object, field: str = "text") -> list[Problem]:
    """Why ``text`` is no note's text: it must be printable text (over several lines), not
    blank, of at most :data:`MAX_NOTE` characters."""
    if not isinstance(text, str):
        return [(field, "must be a string")]
    if not text.strip():
        return [(field, "must not be blank")]
    if len(text) > MAX_NOTE:
        return [(field, f"is longer than {MAX_NOTE} characters")]
    if _unprintable(text, True):
        return [(field, "must be printable text")]
    return []


def _short_problems(field: str, value: str) -> list[Problem]:
    if len(value) > MAX_TEXT:
        return [(field, f"is longer than {MAX_TEXT} characters")]
    if _unprintable(value, False):
        return [(field, "must be printable text")]
    return []


def _by(who: str) -> str:
    return f" by {who}" if who else ""


class NotesMixin(EventsMixin):
    """Release notes and studies (see the module)."""

    # -- notes -------------------------------------------------------------------------------
    async def add_note(
        self, release_id: str, text: str, *, study_id: str = "", author: str = ""
    ) -> ReleaseNote:
        """Add a note (Markdown ``text``) to a release, about one of its studies when
        ``study_id`` is given. NotFoundError for an unknown release; ValidationError (with
        the problems' paths) for a text that is blank, too long or not printable, an author
        that is not short printable text, or a study the release does not name."""
        problems = note_problems(text) + _short_problems("author", author)
        problems += _short_problems("study_id", study_id)
        release = await self.store.get_release(release_id)
        if study_id and study_id not in release.studies:
            named = ", ".join(release.studies[:10]) or "none"
            problems.append(
                ("study_id", f"is not a study of release {release_id} (its studies: {named})")
            )
        if problems:
            raise ValidationError("invalid release note", problems)
        note = ReleaseNote(new_id("NO"), release_id, text, study_id, author)
        about = f" on study {study_id}" if study_id else ""
        stored = await self.store.add_note(
            note,
            new_event(
                EventKind.NOTE,
                f"note {note.id} added to release {release_id}{about}{_by(author)}",
                release_id=release_id,
            ),
        )
        self._events_written()
        return stored

    async def edit_note(self, note_id: str, text: str, *, editor: str = "") -> ReleaseNote:
        """Replace a note's text (its author stays; ``editor``, who changed it, is logged).
        NotFoundError; ValidationError as :meth:`add_note`."""
        problems = note_problems(text)
        if problems:
            raise ValidationError("invalid release note", problems)
        current = await self.store.get_note(note_id)
        updated = await self.store.update_note(
            note_id,
            new_event(
                EventKind.NOTE,
                f"note {note_id} edited{_by(editor)}",
                release_id=current.release_id,
            ),
            text=text,
        )
        self._events_written()
        return updated

    async def delete_note(self, note_id: str, *, by: str = "") -> None:
        """Delete a note (``by``, who deleted it, is logged); NotFoundError."""
        current = await self.store.get_note(note_id)
        await self.store.delete_note(
            note_id,
            new_event(
                EventKind.NOTE,
                f"note {note_id} deleted{_by(by)}",
                release_id=current.release_id,
            ),
        )
        self._events_written()

    async def get_note(self, note_id: str) -> ReleaseNote:
        return await self.store.get_note(note_id)

    async def list_notes(
        self,
        *,
        release_id: str | None = None,
        study_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReleaseNote]:
        """Notes, oldest first: a release's (NotFoundError for an unknown one), a study's
        (NotFoundError when no release names it; ``""``: the notes on releases as a whole),
        or a release's on one study (none when the release does not name it). Neither:
        every note."""
        if release_id is not None:
            await self.store.get_release(release_id)
        elif study_id:
            await self.store.get_study(study_id)
        return await self.store.list_notes(
            release_id=release_id, study_id=study_id, limit=limit, offset=offset
        )

    # -- studies -----------------------------------------------------------------------------
    async def get_study(self, study_id: str) -> Study:
        """The study as its releases tell it; NotFoundError when no release names it."""
        return await self.store.get_study(study_id)

    async def list_studies(self, *, limit: int | None = None, offset: int = 0) -> list[Study]:
        """Every study some release names, newest first (by its first release)."""
        return await self.store.list_studies(limit=limit, offset=offset)
