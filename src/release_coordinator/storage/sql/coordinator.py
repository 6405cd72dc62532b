"""The SQL Coordinator store: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (psycopg 3).

::

    from release_coordinator.storage.sql import SQLStore

    store = await SQLStore.connect("sqlite:///release-coordinator.db")  # or postgresql://...
    async with Coordinator(store, transport) as coordinator:
        ...
    await store.close()

Needs the ``sql`` extra (SQLAlchemy and aiosqlite) or, for PostgreSQL, the ``postgres`` extra
(SQLAlchemy and psycopg). ``import release_coordinator`` never imports this module.

URLs: ``sqlite:///path.db`` and ``sqlite+aiosqlite:///path.db`` use aiosqlite;
``postgresql://...``, ``postgres://...`` and ``postgresql+psycopg://...`` use psycopg's async
connection. Every driver call is awaited: nothing blocks the event loop.

**Which database for what.**

- *SQLite* keeps a coordinator's state in one file across restarts (the demo's default). It is
  **single-process**: one process writes at a time (write transactions are ``BEGIN IMMEDIATE``
  behind one lock per store, in WAL mode with a busy timeout), so a second process over the
  same file waits for the first, and leases only hand releases over from a process that
  stopped. Run several coordinators on PostgreSQL.
- *PostgreSQL* is shared by several coordinator processes. Each unfinished release is driven
  by one of them at a time through a lease on its row, claimed with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` and timed by the database's clock (``now()``), so that
  the processes' clocks do not matter; when a process dies, another takes its releases over
  once the lease runs out.

**How the contract is kept.**

- Every state change is one compare-and-set, ``UPDATE ... WHERE id = :id AND state IN
  (:from_states) RETURNING ...``; a loser re-reads the row and gets ConcurrentUpdateError with
  the state that won. A state change and its events are written in one transaction.
- Versions are computed in the creating (or publishing) transaction from the highest stored
  version, and a UNIQUE constraint on ``(major, minor, patch)`` keeps them unique: a
  transaction that loses the race on it starts again, a bounded number of times.
- Event ids come from the database (an autoincrement key) and, on PostgreSQL, are taken under
  a transaction-level advisory lock held to the commit, so that ids become visible in the order
  they grow and following the log with ``after_id`` never skips a late commit.
- Timestamps are stored as UTC and come back as timezone-aware UTC datetimes.
- Every error of SQLAlchemy or of a driver is translated at the edge into
  :class:`~release_coordinator.errors.StorageError` (:class:`~release_coordinator.errors.
  SchemaError` for a missing or foreign schema); unique clashes the contract speaks of become
  :class:`~release_coordinator.errors.ConflictError`.

**Schema versions.** The schema carries its version in the one-row table
``rc_schema_version``. :meth:`SQLStore.connect` creates a fresh schema in an empty database
(``create=True``, the default) and refuses, with SchemaError, a schema of another version: an
older one is upgraded with ``release-coordinator db upgrade --db URL``
(:func:`~release_coordinator.storage.sql.upgrade`), which applies the steps of
:data:`~release_coordinator.storage.sql.MIGRATIONS` in order, each in its own transaction.
"""

from __future__ import annotations

from release_coordinator.storage.base import CoordinatorStore
from release_coordinator.storage.sql.leases import _Leases
from release_coordinator.storage.sql.notes import _Notes
from release_coordinator.storage.sql.releases import _Releases
from release_coordinator.storage.sql.services import _Services
from release_coordinator.storage.sql.tasks import _Tasks
from release_coordinator.storage.sql.webhooks import _Webhooks

__all__ = ["SQLStore"]


class SQLStore(_Notes, _Webhooks, _Services, _Releases, _Tasks, _Leases, CoordinatorStore):
    """A :class:`CoordinatorStore` in a SQL database (see the module documentation).

    Create it with :meth:`connect`; :meth:`close` disposes of the engine.

    One part per job, over one :class:`~release_coordinator.storage.sql.database.SQLDatabase`
    (the engine, its transactions, the schema's version): task services
    (:mod:`.services`), releases (:mod:`.releases`), tasks (:mod:`.tasks`), the event log
    (:mod:`.events`), leases (:mod:`.leases`), and the release notes with the releases'
    listing by study (:mod:`.notes`).
    """
