"""The local PostgreSQL for tests: a throw-away schema per test, dropped afterwards.

``PG_URL`` (env ``BLAST_TEST_PG``) defaults to the local trust-auth server; tests using the
``pg_url`` fixture are skipped when it cannot be reached.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("BLAST_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _reachable() -> bool:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema (dropped after the test)."""
    if not _reachable():
        pytest.skip("local PostgreSQL not reachable")
    schema = "blast_test_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()
