"""The Coordinator API's records as JSON: task services, releases, tasks, events, release notes
and studies as the API shows them (the shapes of the answer Structs of
:mod:`release_coordinator.coordinator.api_bodies`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from release_coordinator.coordinator.events import event_json
from release_coordinator.coordinator.models import (
    Release,
    ReleaseNote,
    ServiceHealth,
    Study,
    Task,
    TaskService,
    utcnow,
)
from release_coordinator.coordinator.publish_gates import gates_json, publish_gate
from release_coordinator.transports._httpx import url_shown

__all__ = ["event_json", "note_json", "release_json", "service_json", "study_json", "task_json"]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _health_json(health: ServiceHealth) -> dict[str, Any]:
    return {
        "status": health.status.value,
        "consecutive_failures": health.consecutive_failures,
        "last_checked_at": _iso(health.last_checked_at),
        "last_error": health.last_error,
        "reported_name": health.reported_name,
        "reported_version": health.reported_version,
        "message": health.message,
    }


def service_json(service: TaskService) -> dict[str, Any]:
    """A task service as the API shows it (a password in its URL hidden)."""
    return {
        "id": service.id,
        "name": service.name,
        "url": url_shown(service.url),
        "enabled": service.enabled,
        "health": _health_json(service.health),
        "created_at": _iso(service.created_at),
        "updated_at": _iso(service.updated_at),
    }


def release_json(release: Release) -> dict[str, Any]:
    """A release as the API shows it."""
    return {
        "id": release.id,
        "name": release.name,
        "version": release.version,
        "state": release.state.value,
        "description": release.description,
        "studies": list(release.studies),
        "tags": list(release.tags),
        "author": release.author,
        "is_major": release.is_major,
        "auto_publish": release.auto_publish,
        "failure": release.failure,
        "cloned_from": release.cloned_from,
        "created_at": _iso(release.created_at),
        "updated_at": _iso(release.updated_at),
        "state_changed_at": _iso(release.state_changed_at),
        "gates": gates_json(release.gates),
        "publish_gate": None if release.is_final else publish_gate(release, utcnow()),
    }


def task_json(task: Task) -> dict[str, Any]:
    """A task as the API shows it."""
    return {
        "id": task.id,
        "release_id": task.release_id,
        "task_service_id": task.service_id,
        "state": task.state.value,
        "progress": task.progress,
        "message": task.message,
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
        "progress_at": _iso(task.progress_at),
    }


def note_json(note: ReleaseNote) -> dict[str, Any]:
    """A release note as the API shows it."""
    return {
        "id": note.id,
        "release_id": note.release_id,
        "study_id": note.study_id,
        "author": note.author,
        "text": note.text,
        "created_at": _iso(note.created_at),
        "updated_at": _iso(note.updated_at),
    }


def study_json(study: Study) -> dict[str, Any]:
    """A study as the API shows it."""
    return {
        "id": study.id,
        "created_at": _iso(study.created_at),
        "release_ids": list(study.release_ids),
        "latest_release_id": study.latest_release_id,
        "latest_version": study.latest_version,
        "last_published_release_id": study.last_published_release_id,
        "last_published_version": study.last_published_version,
        "last_published_at": _iso(study.last_published_at),
    }
