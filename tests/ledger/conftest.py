"""Fixtures for the ledger tests: every store test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from POOLD_TEST_PG_URL (set by `.ci/postgres.sh`). Locally, without it, the
postgres cases skip; under CI (env CI=true) a missing URL is a failure, never a silent skip.
Each test gets its own PostgreSQL schema (search_path in the URL), dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest


def pg_base_url() -> str | None:
    url = os.environ.get("POOLD_TEST_PG_URL")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but POOLD_TEST_PG_URL is unset: PostgreSQL must run in CI "
                        "(source .ci/postgres.sh && start_postgres)")
        pytest.skip("POOLD_TEST_PG_URL unset (run: source .ci/postgres.sh && start_postgres)")
    return url


async def make_pg_schema_url() -> tuple[str, str, str]:
    """A fresh schema on the test database: (url with search_path, base url, schema)."""
    import asyncpg

    base = pg_base_url()
    assert base is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}search_path={schema}", base, schema


async def drop_pg_schema(base: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty ledger URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    url, base, schema = await make_pg_schema_url()
    try:
        yield url
    finally:
        await drop_pg_schema(base, schema)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL ledger URL (PostgreSQL-only behaviour)."""
    url, base, schema = await make_pg_schema_url()
    try:
        yield url
    finally:
        await drop_pg_schema(base, schema)
