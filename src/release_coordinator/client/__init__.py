"""A client of the operator APIs over HTTP, and the ``release-coordinator`` commands built
on it (``services``, ``releases``, ``rollouts``).

:class:`Client` needs only httpx (a core dependency); the commands print tables with rich when
it is installed (the ``cli`` extra), plain aligned text otherwise.
"""

from __future__ import annotations

from release_coordinator.client.errors import AccessDeniedError
from release_coordinator.client.http import DEFAULT_URL, Client

__all__ = ["DEFAULT_URL", "AccessDeniedError", "Client"]
