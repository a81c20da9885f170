"""DATABASE_URL as people write it, mapped to the async driver moodmate uses, or one clear sentence."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bot.errors import ConfigurationError

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
EXAMPLES = "sqlite:///moodmate.db or postgresql://user:password@localhost:5432/moodmate"


def database_url(setting: str) -> URL:
    """The async SQLAlchemy URL for ``setting``.

    ``sqlite:///…`` and ``sqlite+aiosqlite:///…`` use aiosqlite; ``postgresql://…``,
    ``postgres://…`` and ``postgresql+<any driver>://…`` use asyncpg. For a SQLite file, its
    directory must exist. Anything else raises :class:`ConfigurationError`.
    """
    raw = (setting or "").strip()
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw.removeprefix("postgres://")
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigurationError(f"DATABASE_URL is not a database URL; write it like {EXAMPLES}.") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername=SQLITE_DRIVER)
        _check_sqlite_directory(url)
        return url
    if backend == "postgresql":
        if not url.host and not url.query.get("host"):
            raise ConfigurationError(
                "DATABASE_URL names no PostgreSQL server; write it like "
                "postgresql://user:password@localhost:5432/moodmate."
            )
        return url.set(drivername=POSTGRES_DRIVER)
    raise ConfigurationError(
        f"DATABASE_URL uses {url.drivername!r}, which moodmate does not support; use SQLite or "
        f"PostgreSQL, e.g. {EXAMPLES}."
    )


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def sqlite_path(url: URL) -> Path | None:
    """The SQLite file of ``url`` (None for an in-memory database or another backend)."""
    if url.get_backend_name() != "sqlite" or is_sqlite_memory(url) or url.database is None:
        return None
    if url.database.startswith("file:"):
        return None  # a URI filename: SQLite resolves it
    return Path(url.database)


def _check_sqlite_directory(url: URL) -> None:
    path = sqlite_path(url)
    if path is None:
        return
    directory = path.expanduser().resolve().parent
    if not directory.is_dir():
        raise ConfigurationError(
            f"The directory {directory} for the SQLite database in DATABASE_URL does not exist; "
            "create it or point DATABASE_URL elsewhere."
        )


def describe(url: URL) -> str:
    """Where the database is, for error messages: never the password."""
    if url.get_backend_name() == "sqlite":
        return f"the SQLite database {url.database or ':memory:'}"
    host = url.host or url.query.get("host") or "localhost"
    return f"the PostgreSQL server at {host}:{url.port or 5432} (database {url.database or '(default)'})"
