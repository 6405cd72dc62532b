"""Helpers for tests of the SQL store: a clean PostgreSQL schema per test.

Each test that uses PostgreSQL gets a schema of its own (``rc_t_<random>``), reached through the
connection's ``search_path``, and dropped afterwards: tests never see each other's rows, and
nothing is left in the ``test`` database.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import psycopg
from sqlalchemy.engine import make_url


def _libpq(url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``)."""
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False)


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh, empty schema for one test: yields a URL that uses it; drops it afterwards."""
    schema = f"rc_t_{secrets.token_hex(6)}"
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
