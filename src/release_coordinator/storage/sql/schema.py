"""The SQL schema both stores share: column types, every table, and the migrations.

:data:`SCHEMA_VERSION` is the schema this library writes; :data:`MIGRATIONS` the steps that
bring an older one to it (``release-coordinator db upgrade``, :func:`~release_coordinator.
storage.sql.upgrade`). The Coordinator's tables (services, releases, tasks, events) came with
version 1, the RolloutManager's with versions 2 and 3, the release notes with version 5, the
webhooks with version 7, the gates before publish with version 9.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]

_ID = sa.String(128)


# -- types ---------------------------------------------------------------------------------------
class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime: ``timestamptz`` on PostgreSQL, UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: records hold timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: Lease expiry by the database's clock: ``timestamptz`` on PostgreSQL, a julian day on SQLite
#: (whose ``CURRENT_TIMESTAMP`` has whole seconds only).
_LEASE_TIME = sa.DateTime(timezone=True).with_variant(sa.Float(), "sqlite")


# -- schema ----------------------------------------------------------------------------------------
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version_table = sa.Table(
    "rc_schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="one_row"),
)

services = sa.Table(
    "rc_services",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False, unique=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("health_status", sa.String(16), nullable=False),
    sa.Column("health_failures", sa.Integer, nullable=False),
    sa.Column("health_checked_at", UTCDateTime, nullable=True),
    sa.Column("health_error", sa.Text, nullable=False),
    sa.Column("health_name", sa.Text, nullable=False),
    sa.Column("health_version", sa.Text, nullable=False),
    sa.Column("health_message", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

releases = sa.Table(
    "rc_releases",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("major", sa.Integer, nullable=False),
    sa.Column("minor", sa.Integer, nullable=False),
    sa.Column("patch", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("studies", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("is_major", sa.Boolean, nullable=False),
    sa.Column("auto_publish", sa.Boolean, nullable=False),
    sa.Column("failure", sa.Text, nullable=False),
    sa.Column("cloned_from", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("state_changed_at", UTCDateTime, nullable=False),
    # its gates before publish as JSON (schema version 9; NULL: none)
    sa.Column("gates", sa.JSON, nullable=True),
    sa.Column("lease_owner", _ID, nullable=True),
    sa.Column("lease_expires_at", _LEASE_TIME, nullable=True),
    sa.UniqueConstraint("major", "minor", "patch", name="uq_rc_releases_version"),
    sa.Index("ix_rc_releases_state", "state"),
)

tasks = sa.Table(
    "rc_tasks",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("release_id", _ID, sa.ForeignKey("rc_releases.id"), nullable=False),
    # No foreign key: a service may be removed once the releases that used it are final.
    sa.Column("service_id", _ID, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("progress_at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_tasks_release", "release_id"),
    sa.Index("ix_rc_tasks_service", "service_id"),
)

events = sa.Table(
    "rc_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("release_id", _ID, nullable=True),
    sa.Column("task_id", _ID, nullable=True),
    sa.Column("task_service_id", _ID, nullable=True),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_events_release", "release_id"),
    sa.Index("ix_rc_events_task", "task_id"),
    sa.Index("ix_rc_events_service", "task_service_id"),
)

# The rollout half (schema version 2). Times of children and stages are the managers' clock
# (seconds; wall-clock time when several managers share the database).
counters = sa.Table(
    "rc_counters",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

rollouts = sa.Table(
    "rc_rollouts",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),  # GeoJSON
    sa.Column("match", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("policy", sa.Text, nullable=False),  # JSON (policy_json)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("gated", sa.Boolean, nullable=False),
    sa.Column("strategy_text", sa.Text, nullable=False),
    sa.Column("archive", sa.LargeBinary, nullable=False),
    sa.Column("archive_files", sa.Text, nullable=False),  # JSON list, as checked on upload
    sa.Column("targets", sa.BigInteger, nullable=False),  # how many targetings so far
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The data release the rollout waits for (schema version 6); NULL: none.
    sa.Column("after_release", _ID, nullable=True),
    sa.Index("ix_rc_rollouts_state", "state"),
)

# A Rollout's own columns, less those that never change (the rollout store decodes those
# once).
_ROLLOUT_COLUMNS: tuple[sa.Column[Any], ...] = (
    rollouts.c.id,
    rollouts.c.seq,
    rollouts.c.name,
    rollouts.c.match,
    rollouts.c.priority,
    rollouts.c.state,
    rollouts.c.reason,
    rollouts.c.gated,
    rollouts.c.after_release,
)

children = sa.Table(
    "rc_children",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("area", sa.Text, nullable=False),  # GeoJSON
    sa.Column("number_of_children", sa.Integer, nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=True),
    sa.Column("first_change", sa.BigInteger, nullable=False),  # registration order
    sa.Column("change", sa.BigInteger, nullable=False),  # the last save's number
    sa.Index("ix_rc_children_change", "change"),
)

child_releases = sa.Table(
    "rc_child_releases",
    metadata,
    sa.Column("rollout_id", _ID, sa.ForeignKey("rc_rollouts.id"), primary_key=True),
    sa.Column("child_id", _ID, sa.ForeignKey("rc_children.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),  # targeting order within the rollout
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("acknowledged", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    # JSON of the stages; NULL while the child is Todo with every stage Pending.
    sa.Column("stages", sa.Text, nullable=True),
    # The stage statuses, "." joined in the strategy's order ("" while NULL stages): counted
    # with GROUP BY.
    sa.Column("statuses", sa.String(256), nullable=False),
    sa.Column("waiting_stage", sa.Text, nullable=False),  # the SuccessWaiting stage, or ""
    sa.Column("waiting_since", sa.Float, nullable=True),
    sa.Index("ix_rc_child_releases_child", "child_id"),
    sa.Index("ix_rc_child_releases_order", "rollout_id", "seq"),
)

barriers = sa.Table(
    "rc_barriers",
    metadata,
    sa.Column("rollout_id", _ID, sa.ForeignKey("rc_rollouts.id"), primary_key=True),
    sa.Column("stage", sa.String(256), primary_key=True),
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Column("waiting_since", sa.Float, nullable=True),
)

child_tokens = sa.Table(
    "rc_child_tokens",
    metadata,
    sa.Column("child_id", _ID, primary_key=True),
    sa.Column("digest", sa.String(128), nullable=False),  # of the token, never the token
    sa.Column("issued_at", UTCDateTime, nullable=False),
)

#: Leases on periodic work that one process of several does at a time (a RolloutManager's
#: background loop), timed by the database's clock like the releases' leases.
work_leases = sa.Table(
    "rc_work_leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", _ID, nullable=False),
    sa.Column("expires_at", _LEASE_TIME, nullable=False),
)

#: Release notes (schema version 5), each on one release and, when ``study_id`` is not empty,
#: about one of its studies. Studies have no table: they are read from the releases.
notes = sa.Table(
    "rc_notes",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("release_id", _ID, sa.ForeignKey("rc_releases.id"), nullable=False),
    sa.Column("study_id", sa.Text, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_notes_release", "release_id"),
    sa.Index("ix_rc_notes_study", "study_id"),
)

#: Webhook subscriptions (schema version 7) with their delivery state and lease, and the log
#: of their delivery attempts (the newest ``DELIVERY_LOG_LIMIT`` of each).
webhooks = sa.Table(
    "rc_webhooks",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("kinds", sa.JSON, nullable=False),
    sa.Column("types", sa.JSON, nullable=False),
    sa.Column("states", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("max_batch", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("cursor", sa.BigInteger, nullable=False),
    sa.Column("pending_until", sa.BigInteger, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("last_delivery_at", UTCDateTime, nullable=True),
    sa.Column("disabled_reason", sa.Text, nullable=False),
    sa.Column("lease_owner", _ID, nullable=True),
    sa.Column("lease_expires_at", _LEASE_TIME, nullable=True),
)

webhook_deliveries = sa.Table(
    "rc_webhook_deliveries",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", _ID, sa.ForeignKey("rc_webhooks.id"), nullable=False),
    sa.Column("id", sa.String(256), nullable=False),
    sa.Column("first_event_id", sa.BigInteger, nullable=False),
    sa.Column("last_event_id", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_webhook_deliveries_webhook", "webhook_id", "seq"),
)

#: The rollout event log (schema version 8): the RolloutManager's events, written with the
#: changes they record (see ``storage/sql/rollout_events.py``).
rollout_events = sa.Table(
    "rc_rollout_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("rollout_id", _ID, nullable=True),
    sa.Column("child_id", _ID, nullable=True),
    sa.Column("stage", sa.String(256), nullable=True),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_rc_rollout_events_rollout", "rollout_id"),
    sa.Index("ix_rc_rollout_events_child", "child_id"),
)

_TABLES = frozenset(metadata.tables)

#: A release's columns less its lease (the Coordinator's lease methods alone read those).
_RELEASE_COLUMNS = [c for c in releases.c if c.name not in ("lease_owner", "lease_expires_at")]
_TASK_COLUMNS = list(tasks.c)


# -- migrations ------------------------------------------------------------------------------------
@attrs.frozen
class Migration:
    """One step of the schema: from ``version - 1`` to ``version``.

    ``apply`` runs with a synchronous SQLAlchemy connection inside the step's transaction
    (through ``AsyncConnection.run_sync``); the version row is moved in the same transaction.
    """

    version: int
    description: str
    apply: Callable[[Connection], None]


def _add_column(conn: Connection, table: sa.Table, column: sa.Column[Any]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` (nullable) unless the table has it already."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    if column.name not in present:
        preparer = conn.dialect.identifier_preparer
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(table)} "
            f"ADD COLUMN {preparer.format_column(column)} {kind}"
        )


def _to_v1(conn: Connection) -> None:
    """Version 0 is the layout without release leases (no ``lease_owner``/``lease_expires_at``
    on ``rc_releases``). No released version wrote it: it is the shape every later step takes."""
    for column in (releases.c.lease_owner, releases.c.lease_expires_at):
        _add_column(conn, releases, column)
    # Any table a version-0 database lacks (of version 1: later steps add their own).
    for table in (schema_version_table, services, releases, tasks, events):
        table.create(conn, checkfirst=True)


def _to_v2(conn: Connection) -> None:
    """The rollout half's tables (children, rollouts, per-child state, barriers)."""
    for table in (counters, rollouts, children, child_releases, barriers):
        table.create(conn, checkfirst=True)


def _to_v3(conn: Connection) -> None:
    """The children's token digests (the HTTP layer's per-child credentials), kept with the
    children so that a restart or another process knows them."""
    child_tokens.create(conn, checkfirst=True)


def _to_v4(conn: Connection) -> None:
    """The leases on periodic work (one RolloutManager process of several runs the loop)."""
    work_leases.create(conn, checkfirst=True)


def _to_v5(conn: Connection) -> None:
    """The release notes (on a release, or on one of its studies). Studies need no table of
    their own: they are read from the releases' ``studies``, so nothing is backfilled."""
    notes.create(conn, checkfirst=True)


def _to_v6(conn: Connection) -> None:
    """Rollouts gated on data releases: ``rc_rollouts.after_release`` (NULL for the rollouts
    that exist already: they wait for nothing)."""
    _add_column(conn, rollouts, rollouts.c.after_release)


def _to_v7(conn: Connection) -> None:
    """Webhooks: the subscriptions with their delivery state, and their delivery log."""
    for table in (webhooks, webhook_deliveries):
        table.create(conn, checkfirst=True)


def _to_v8(conn: Connection) -> None:
    """The rollout event log (empty: what happened before was not logged)."""
    rollout_events.create(conn, checkfirst=True)


def _to_v9(conn: Connection) -> None:
    """Gates before publish: ``rc_releases.gates`` (NULL for the releases that exist already:
    they wait for nothing but their tasks)."""
    _add_column(conn, releases, releases.c.gates)


#: Every step, in order; the last one's version is the schema this library writes.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "leases on releases", _to_v1),
    Migration(2, "the RolloutManager's tables", _to_v2),
    Migration(3, "the children's token digests", _to_v3),
    Migration(4, "leases on periodic work", _to_v4),
    Migration(5, "release notes and studies", _to_v5),
    Migration(6, "rollouts gated on data releases", _to_v6),
    Migration(7, "webhooks and their delivery log", _to_v7),
    Migration(8, "the rollout event log", _to_v8),
    Migration(9, "gates before publish", _to_v9),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
