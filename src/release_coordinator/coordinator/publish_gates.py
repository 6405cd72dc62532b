"""Gates before publish: what a staged release waits for before it may leave ``staged``.

A release may require, besides its tasks being staged everywhere:

- **approvals**: ``required_approvals`` distinct operators (admins, over the API) approve it
  (:meth:`PublishGatesMixin.approve`); an approval may come at any time before it is final;
- **checks**: each of ``checks`` names a webhook (:mod:`~release_coordinator.coordinator.
  webhooks`) that is asked, once the release is staged, whether it may be published: a signed
  ``POST`` of ``{"check": "publish", "release": {...}}`` to the webhook's URL, answered
  ``2xx`` with ``{"result": "pass"}`` or ``{"result": "fail", "message": "..."}``. A ``fail``
  holds until the checks are run again (:meth:`PublishGatesMixin.rerun_checks`); an error (no
  answer, another status, another body) is asked again every :data:`CHECK_RETRY` seconds;
- **a scheduled time**: not before ``publish_at``.

While a gate is closed :meth:`~release_coordinator.coordinator.engine.Coordinator.publish` is
refused (409, saying which gate); once every gate is open a release with ``auto_publish`` or a
``publish_at`` publishes by itself (at ``publish_at``, or as soon as the last gate opens after
it), and one without waits for an operator's publish as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import httpx

from release_coordinator.coordinator.events import EventsMixin, new_event
from release_coordinator.coordinator.models import (
    NO_GATES,
    Approval,
    CheckResult,
    Event,
    EventKind,
    EventType,
    PublishGates,
    Release,
    new_id,
    publish_gate,
    utcnow,
)
from release_coordinator.coordinator.webhooks import delivery_headers, printable_excerpt
from release_coordinator.errors import (
    ConflictError,
    NotFoundError,
    Problem,
    ValidationError,
)
from release_coordinator.fsm.release import ReleaseState

__all__ = [
    "CHECK_RETRY",
    "MAX_APPROVALS",
    "MAX_CHECKS",
    "PublishGatesMixin",
    "gate_problems",
    "gates_from_json",
    "gates_json",
    "publish_gate",
]

#: Seconds before a check that could not be asked (no answer, a bad one) is asked again.
CHECK_RETRY = 30.0
#: The most approvals a release may require, and the most checks it may name.
MAX_APPROVALS = 20
MAX_CHECKS = 10
_CHECK_TIMEOUT = 10.0
_MESSAGE = 500




# -- JSON (the SQL column and the API) -----------------------------------------------------------
def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def gates_json(gates: PublishGates) -> dict[str, Any]:
    """The gates as JSON (what the API shows with a release, and the SQL column holds)."""
    return {
        "required_approvals": gates.required_approvals,
        "checks": list(gates.checks),
        "publish_at": _iso(gates.publish_at),
        "approvals": [{"by": a.by, "at": _iso(a.at)} for a in gates.approvals],
        "results": [
            {"webhook_id": r.webhook_id, "result": r.result, "message": r.message, "at": _iso(r.at)}
            for r in gates.results
        ],
        "checks_round": gates.checks_round,
    }


def gates_from_json(value: Any) -> PublishGates:
    """:func:`gates_json`'s output back as PublishGates (None: no gates)."""
    if not value:
        return NO_GATES
    return PublishGates(
        required_approvals=int(value["required_approvals"]),
        checks=tuple(value["checks"]),
        publish_at=_time(value["publish_at"]),
        approvals=tuple(Approval(a["by"], _time(a["at"]) or utcnow()) for a in value["approvals"]),
        results=tuple(
            CheckResult(r["webhook_id"], r["result"], r["message"], _time(r["at"]) or utcnow())
            for r in value["results"]
        ),
        checks_round=int(value.get("checks_round", 0)),
    )


def gate_problems(
    required_approvals: object, checks: Sequence[object], publish_at: object
) -> list[Problem]:
    """What is wrong with gates asked for a new release (the checks' webhooks excepted)."""
    problems: list[Problem] = []
    if (
        isinstance(required_approvals, bool)
        or not isinstance(required_approvals, int)
        or not 0 <= required_approvals <= MAX_APPROVALS
    ):
        problems.append(("required_approvals", f"must be an integer within 0..{MAX_APPROVALS}"))
    if len(checks) > MAX_CHECKS:
        problems.append(("checks", f"names more than {MAX_CHECKS} checks"))
    if len(set(map(str, checks))) != len(checks):
        problems.append(("checks", "names a webhook twice"))
    if publish_at is not None and (
        not isinstance(publish_at, datetime) or publish_at.tzinfo is None
    ):
        problems.append(("publish_at", "must be a time with its zone"))
    return problems


# -- the Coordinator's part ----------------------------------------------------------------------
def _answer_of(response: httpx.Response) -> tuple[str, str]:
    """A check's ``(result, message)`` from its HTTP answer."""
    if not 200 <= response.status_code < 300:
        return "error", f"it answered HTTP {response.status_code}"
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return "error", "its answer is not JSON"
    result = body.get("result") if isinstance(body, dict) else None
    if result not in ("pass", "fail"):
        return "error", 'its answer has no "result" of "pass" or "fail"'
    message = body.get("message", "")
    text = message if isinstance(message, str) else ""
    return result, printable_excerpt(text, _MESSAGE)


class PublishGatesMixin(EventsMixin):
    """Approvals, checks and a scheduled time before publish (see the module)."""

    #: The httpx client the checks are asked with (None: a fresh one per ask, 10 s time-out);
    #: a host or a test may set one of its own.
    checks_http: httpx.AsyncClient | None = None

    def _poke(self, release_id: str) -> None:  # (the driver's: wakes the release's driver)
        raise NotImplementedError

    async def _gates_asked(
        self, required_approvals: int, checks: Iterable[str], publish_at: datetime | None
    ) -> PublishGates:
        """The gates of a new release, checked (ValidationError with paths)."""
        names = tuple(checks)
        problems = gate_problems(required_approvals, names, publish_at)
        for i, webhook_id in enumerate(names):
            try:
                await self.store.get_webhook(str(webhook_id))
            except NotFoundError:
                problems.append((f"checks[{i}]", f"names no webhook ({webhook_id!r})"))
        if problems:
            raise ValidationError("invalid gates before publish", problems)
        return PublishGates(required_approvals, names, publish_at)

    async def approve(self, release_id: str, *, by: str) -> Release:
        """``by`` approves the release (once: approving again changes nothing), at any time
        before it is final. Refused with ConflictError for a release that needs no approval
        or is final; ValidationError for an empty ``by``."""
        if not by.strip() or len(by) > 200 or not by.isprintable():
            raise ValidationError("invalid approval", [("by", "must name who approves")])

        def approved(release: Release) -> tuple[PublishGates, list[Event]] | None:
            gates = release.gates
            if release.is_final:
                raise ConflictError(
                    f"release {release_id} is {release.state.value}: too late to approve",
                    id=release_id,
                )
            if not gates.required_approvals:
                raise ConflictError(f"release {release_id} needs no approval", id=release_id)
            if any(a.by == by for a in gates.approvals):
                return None
            more = attrs.evolve(gates, approvals=(*gates.approvals, Approval(by)))
            count = f"{len(more.approvals)} of {gates.required_approvals}"
            said = f"release {release.name!r} approved by {by} ({count})"
            return more, [new_event(EventKind.USER_ACTION, said, release_id=release_id)]

        stored = await self.store.update_gates(release_id, approved)
        self._events_written()
        self._poke(release_id)
        return stored

    async def rerun_checks(self, release_id: str, *, by: str = "") -> Release:
        """Forget the checks' answers: the staged release asks them all again now (an answer
        to an ask made before comes too late and is dropped; a publish decided on the old
        answers and not made yet is refused). ConflictError for a release without checks, or
        one that is publishing or final."""

        def again(release: Release) -> tuple[PublishGates, list[Event]]:
            if (
                not release.gates.checks
                or release.is_final
                or release.state is ReleaseState.PUBLISHING
            ):
                why = "has no checks" if not release.gates.checks else f"is {release.state.value}"
                raise ConflictError(f"release {release_id} {why}", id=release_id)
            gates = release.gates
            fresh = attrs.evolve(gates, results=(), checks_round=gates.checks_round + 1)
            said = f"release {release.name!r}: its checks are asked again" + (
                f" (by {by})" if by else ""
            )
            return fresh, [new_event(EventKind.USER_ACTION, said, release_id=release_id)]

        stored = await self.store.update_gates(release_id, again)
        self._events_written()
        self._poke(release_id)
        return stored

    async def _ask_checks(self, release: Release, now: datetime) -> Release:
        """Ask the staged release's checks that have no answer (or a stale error), all at
        once, and store their answers into its gates as they are then (unless the checks were
        asked again meanwhile: those answers are dropped); the release as it is then."""
        gates = release.gates
        stale = now - timedelta(seconds=CHECK_RETRY)
        due = [
            webhook_id
            for webhook_id in gates.checks
            if (result := gates.result_of(webhook_id)) is None
            or (result.result == "error" and result.at <= stale)
        ]
        if not due:
            return release
        answers = await asyncio.gather(*(self._ask(release, webhook_id) for webhook_id in due))
        asked_round = gates.checks_round

        def answered(current: Release) -> tuple[PublishGates, list[Event]] | None:
            fresh = current.gates
            if current.state is not ReleaseState.STAGED or fresh.checks_round != asked_round:
                return None  # canceled, published or asked again meanwhile: too late
            kept = [r for r in fresh.results if r.webhook_id not in due]
            events = [
                new_event(
                    EventKind.HEALTH if a.result == "error" else EventKind.TRANSITION,
                    f"check {a.webhook_id} of release {current.name!r}: {a.result}"
                    + (f" ({a.message})" if a.message else ""),
                    type=EventType.INFO if a.result == "pass" else EventType.WARNING,
                    release_id=current.id,
                )
                for a in answers
            ]
            return attrs.evolve(fresh, results=(*kept, *answers)), events

        stored = await self.store.update_gates(release.id, answered)
        self._events_written()
        return stored

    async def _ask(self, release: Release, webhook_id: str) -> CheckResult:
        try:
            webhook = await self.store.get_webhook(webhook_id)
        except NotFoundError:
            return CheckResult(webhook_id, "error", "its webhook was removed")
        body = json.dumps(
            {
                "check": "publish",
                "release": {
                    "id": release.id,
                    "name": release.name,
                    "version": release.version,
                    "state": release.state.value,
                    "studies": list(release.studies),
                    "tags": list(release.tags),
                    "author": release.author,
                },
            }
        ).encode()
        message_id = f"{webhook_id}-check-{release.id}-{new_id('CK')}"  # (a new one each ask)
        headers = delivery_headers(webhook.secret, message_id, body)
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT):  # the whole ask, its answer read too
                if self.checks_http is not None:
                    response = await self.checks_http.post(
                        webhook.url, content=body, headers=headers
                    )
                else:
                    async with httpx.AsyncClient(
                        timeout=_CHECK_TIMEOUT, follow_redirects=False
                    ) as http:
                        response = await http.post(webhook.url, content=body, headers=headers)
        except TimeoutError:
            return CheckResult(webhook_id, "error", f"no answer within {_CHECK_TIMEOUT:g} s")
        except Exception as exc:  # httpx's, and what a bad URL makes the stack raise
            return CheckResult(webhook_id, "error", f"no answer ({type(exc).__name__})")
        result, message = _answer_of(response)
        return CheckResult(webhook_id, result, message)

    def _gate_pause(self, release: Release, now: datetime, longest: float) -> float:
        """How long a staged release with gates may pause: until its scheduled time, or the
        next ask of a check that could not be asked."""
        pause = longest
        gates = release.gates
        if gates.publish_at is not None and gates.publish_at > now:
            pause = min(pause, (gates.publish_at - now).total_seconds())
        if any(r.result == "error" for r in gates.results):
            pause = min(pause, CHECK_RETRY)
        return max(pause, 0.01)
