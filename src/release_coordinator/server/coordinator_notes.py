"""The Coordinator API's release notes and studies, and the releases' listing by study.

======  ======================================  =====================================  ==========
method  path                                    what                                   success
======  ======================================  =====================================  ==========
GET     ``/releases/{id}/notes``                its notes, oldest first (``study_id``)  200
POST    ``/releases/{id}/notes``                ``{text, study_id, author}``           201
GET     ``/notes/{id}``                         one note                               200
PATCH   ``/notes/{id}``                         ``{text}``                             200
DELETE  ``/notes/{id}``                         delete it                              204
GET     ``/studies``                            every study, newest first              200
GET     ``/studies/{id}``                       one, with its releases and versions    200
GET     ``/studies/{id}/notes``                 the notes on it, oldest first          200
GET     ``/releases?study=``                    the releases that name a study         200
======  ======================================  =====================================  ==========

A note's author is the request's ``author``, else the operator's token name. Writing notes is
a releaser's work (see :mod:`~release_coordinator.server.roles`): a releaser adds notes under
its own name only and edits or deletes its own notes only; an admin may write any. Needs the
``server`` extra (Starlette).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.coordinator.models import ReleaseNote
from release_coordinator.server.common import json_response, page_of, paging
from release_coordinator.server.coordinator_json import note_json, study_json
from release_coordinator.server.coordinator_requests import (
    NOTE_CREATE,
    NOTE_UPDATE,
    query_text,
)
from release_coordinator.server.coordinator_routes import (
    ReleaseEndpoints,
    Table,
    _Endpoints,
)
from release_coordinator.server.roles import Role
from release_coordinator.server.token_auth import Principal, forbidden

__all__ = ["NoteEndpoints", "ReleaseByStudyEndpoints", "StudyEndpoints"]


def _page(notes: list[ReleaseNote], limit: int, offset: int) -> Response:
    """A page of notes read with ``limit + 1``."""
    items = [note_json(n) for n in notes[:limit]]
    return json_response(200, page_of(items, limit, offset, more=len(notes) > limit))


class NoteEndpoints(_Endpoints):
    """Release notes: on a release, or on one of its studies."""

    def _own_only(self, who: Principal, author: str | None, what: str) -> None:
        """A releaser writes under its own name (an admin, or an anonymous app, as anyone);
        a releaser without a name (a token given without one) writes no note."""
        if who.role is not Role.RELEASER:
            return
        name = self.access.author_name(who)
        if not name:
            raise forbidden(
                "a releaser's token needs a name to write notes (name:releaser=token): its "
                "notes are its own by that name"
            )
        if author is not None and author != name:
            raise forbidden(
                f"a releaser {what} its own notes only: this note's author is {author!r}, the "
                f"token's name {name!r} (an admin may write any note)"
            )

    async def list_of_release(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        found = await self.coordinator.list_notes(
            release_id=request.path_params["release_id"],
            study_id=query_text(request, "study_id"),
            limit=limit + 1,
            offset=offset,
        )
        return _page(found, limit, offset)

    async def create(self, request: Request) -> Response:
        who = await self.access.operator(request)
        body = await NOTE_CREATE.read(request, self.max_body)
        self._own_only(who, body.author, "adds")
        note = await self.coordinator.add_note(
            request.path_params["release_id"],
            body.text,
            study_id=body.study_id or "",
            author=self.access.author_name(who) if body.author is None else body.author,
        )
        return json_response(201, note_json(note))

    async def get(self, request: Request) -> Response:
        await self.access.operator(request)
        note = await self.coordinator.get_note(request.path_params["note_id"])
        return json_response(200, note_json(note))

    async def update(self, request: Request) -> Response:
        who = await self.access.operator(request)
        body = await NOTE_UPDATE.read(request, self.max_body)
        if who.role is Role.RELEASER:
            note_id = request.path_params["note_id"]
            self._own_only(who, (await self.coordinator.get_note(note_id)).author, "edits")
        note = await self.coordinator.edit_note(
            request.path_params["note_id"], body.text, editor=self.access.author_name(who)
        )
        return json_response(200, note_json(note))

    async def remove(self, request: Request) -> Response:
        who = await self.access.operator(request)
        if who.role is Role.RELEASER:
            note_id = request.path_params["note_id"]
            self._own_only(who, (await self.coordinator.get_note(note_id)).author, "deletes")
        await self.coordinator.delete_note(
            request.path_params["note_id"], by=self.access.author_name(who)
        )
        return Response(status_code=204)

    def table(self) -> Table:
        of_release = "/releases/{release_id}/notes"
        one = "/notes/{note_id}"
        return [
            (of_release, "GET", self.list_of_release),
            (of_release, "POST", self.create),
            (one, "GET", self.get),
            (one, "PATCH", self.update),
            (one, "DELETE", self.remove),
        ]


class StudyEndpoints(_Endpoints):
    """Studies, read from the releases that name them."""

    async def list(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        found = await self.coordinator.list_studies(limit=limit + 1, offset=offset)
        items = [study_json(s) for s in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    async def get(self, request: Request) -> Response:
        await self.access.operator(request)
        study = await self.coordinator.get_study(request.path_params["study_id"])
        return json_response(200, study_json(study))

    async def notes(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        study_id = request.path_params["study_id"]
        found = await self.coordinator.list_notes(study_id=study_id, limit=limit + 1, offset=offset)
        return _page(found, limit, offset)

    def table(self) -> Table:
        one = "/studies/{study_id}"
        return [
            ("/studies", "GET", self.list),
            (one, "GET", self.get),
            (f"{one}/notes", "GET", self.notes),
        ]


class ReleaseByStudyEndpoints(ReleaseEndpoints):
    """The releases' endpoints, whose listing also filters by ``study`` (in the store)."""

    _by_study = True
