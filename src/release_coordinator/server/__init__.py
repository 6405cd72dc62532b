"""Thin ASGI apps that expose release_coordinator's wire protocols over HTTP.

These modules need the ``server`` extra (Starlette and uvicorn)::

    pip install 'release-coordinator[server]'

Nothing here is imported by ``import release_coordinator``; import the app modules explicitly,
e.g. ``from release_coordinator.server.taskservice_app import task_service_app``.
"""

try:
    import starlette  # noqa: F401  (every module of this package needs it)
    import uvicorn  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.server needs the server extra: "
        "pip install 'release-coordinator[server]'"
    ) from error
