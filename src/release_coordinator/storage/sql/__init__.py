"""The SQL adapters: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (psycopg 3).

::

    from release_coordinator.storage.sql import SQLRolloutStore, SQLStore

Needs the ``sql`` extra (or ``postgres`` for PostgreSQL); ``import release_coordinator`` never
imports this package. :class:`SQLStore` is the Coordinator's store, :class:`SQLRolloutStore`
the RolloutManager's; both share one schema (:data:`SCHEMA_VERSION`, :data:`MIGRATIONS`).

The modules, by job: :mod:`.schema` (tables and migrations), :mod:`.engine` (URLs, engines,
error translation), :mod:`.database` (the engine's transactions and the schema's version,
:func:`upgrade`, :func:`check`); the Coordinator's store :mod:`.coordinator` with its parts
:mod:`.services`, :mod:`.releases`, :mod:`.tasks`, :mod:`.events`, :mod:`.leases`; the
RolloutManager's store :mod:`.rollout` with its parts :mod:`.rollout_rows`,
:mod:`.rollout_codec`, :mod:`.poll`, :mod:`.child_state`.
"""

from __future__ import annotations

try:  # every module of the package needs SQLAlchemy (and its asyncio extension)
    import sqlalchemy.ext.asyncio  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.storage.sql needs the sql extra: "
        "pip install 'release-coordinator[sql]' (or '[postgres]' for PostgreSQL)"
    ) from error

from release_coordinator.storage.sql.coordinator import SQLStore
from release_coordinator.storage.sql.database import check, upgrade
from release_coordinator.storage.sql.engine import normalize_url
from release_coordinator.storage.sql.rollout import SQLRolloutStore
from release_coordinator.storage.sql.schema import MIGRATIONS, SCHEMA_VERSION, Migration

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "SQLRolloutStore",
    "SQLStore",
    "check",
    "normalize_url",
    "upgrade",
]
