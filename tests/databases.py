"""Databases for the repository tests: SQLite files, SQLite in memory, and a real PostgreSQL.

PostgreSQL is the server at ``MOODMATE_TEST_POSTGRES_URL`` (default: trust auth on 127.0.0.1:5432,
database ``test``). Every test gets a database of its own, created for it and dropped after; where
no server answers, the PostgreSQL variants skip with one line saying so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

ADMIN_URL = os.environ.get("MOODMATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SKIP_REASON = f"no PostgreSQL server answers at {ADMIN_URL} (set MOODMATE_TEST_POSTGRES_URL)"

_reachable: bool | None = None


async def _admin():  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncpg.connect(ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://"), timeout=3)


async def postgres_available() -> bool:
    global _reachable
    if _reachable is None:
        try:
            connection = await _admin()
        except Exception:
            _reachable = False
        else:
            await connection.close()
            _reachable = True
    return _reachable


@asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test (skips when there is no server); its URL."""
    if not await postgres_available():
        pytest.skip(SKIP_REASON)
    name = f"moodmate_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


BACKENDS = ["sqlite-file", "sqlite-memory", "postgresql"]
FILE_BACKENDS = ["sqlite-file", "postgresql"]


@asynccontextmanager
async def database_url(backend: str, tmp_path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A fresh database of ``backend`` (one of ``BACKENDS``), as a DATABASE_URL."""
    if backend == "postgresql":
        async with fresh_postgres() as url:
            yield url
    elif backend == "sqlite-memory":
        yield "sqlite+aiosqlite:///:memory:"
    else:
        yield f"sqlite:///{tmp_path / 'r.db'}"
