"""The SQL adapters: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (psycopg 3).

::

    from release_coordinator.storage.sql import SQLRolloutStore, SQLStore

Needs the ``sql`` extra (or ``postgres`` for PostgreSQL); ``import release_coordinator`` never
imports this package. :class:`SQLStore` is the Coordinator's store, :class:`SQLRolloutStore`
the RolloutManager's; both share one schema (:data:`SCHEMA_VERSION`, :data:`MIGRATIONS`).
"""

from __future__ import annotations

from release_coordinator.storage.sql.coordinator import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    SQLStore,
    check,
    normalize_url,
    upgrade,
)
from release_coordinator.storage.sql.rollout import SQLRolloutStore

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
