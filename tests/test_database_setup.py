"""DATABASE_URL forms, one-sentence errors for URLs that cannot work, and no message text in logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import ConfigurationError, StorageError
from storage import open_repository
from storage.urls import database_url
from tests.databases import FILE_BACKENDS
from tests.databases import database_url as fresh_database

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("setting", "driver"),
    [
        ("sqlite:///moodmate.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///moodmate.db", "sqlite+aiosqlite"),
        ("sqlite://", "sqlite+aiosqlite"),
        ("postgresql://u:p@db.example:5432/moodmate", "postgresql+asyncpg"),
        ("postgres://u:p@db.example/moodmate", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u@db.example/moodmate", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@db.example/moodmate", "postgresql+asyncpg"),
    ],
)
def test_plain_urls_map_to_the_async_drivers(setting: str, driver: str) -> None:
    url = database_url(setting)
    assert url.drivername == driver
    assert url.database == database_url(setting.replace("postgres://", "postgresql://")).database


@pytest.mark.parametrize(
    ("setting", "names"),
    [
        ("mysql://u@h/db", "does not support"),
        ("not a url", "is not a database URL"),
        ("postgresql:///moodmate", "names no PostgreSQL server"),
        ("sqlite:////no/such/directory/moodmate.db", "/no/such/directory"),
    ],
)
def test_unusable_urls_are_one_sentence(setting: str, names: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_repository(setting)
    message = str(caught.value)
    assert names in message and "\n" not in message and message.endswith(".")


async def test_an_unreachable_server_is_one_sentence() -> None:
    repository = open_repository("postgresql://moodmate@127.0.0.1:9/moodmate")  # port 9: nothing listens
    with pytest.raises(ConfigurationError, match=r"127\.0\.0\.1:9 .*start the server or fix the host"):
        await repository.initialize()
    await repository.close()


def test_the_command_line_says_one_sentence_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": "sqlite:////no/such/dir/m.db"}
    result = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "stats"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "moodmate: The directory /no/such/dir for the SQLite database in DATABASE_URL does not exist; "
        "create it or point DATABASE_URL elsewhere."
    ]


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
async def test_a_database_error_never_logs_message_text(
    tmp_path: Path, backend: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "my secret confession 93817"
    async with fresh_database(backend, tmp_path) as url:
        repository = open_repository(url)
        await repository.initialize()
        try:
            with caplog.at_level(level):
                user = await repository.ensure_user("console", "u", "u")
                chat = await repository.ensure_chat("console", "c", True, user.id)
                await repository.add_message(user.id, chat.id, "user", secret)
                try:  # a real constraint violation: no such user
                    await repository.add_message(user.id + 999, chat.id, "user", secret)
                except StorageError as error:
                    failure = error
                    logging.getLogger("bot.engine").exception("Could not answer a console message")
        finally:
            await repository.close()
    assert failure.__cause__ is not None and secret not in str(failure.__cause__)
    assert "Could not answer" in caplog.text
    assert secret not in caplog.text
    assert all(secret not in record.getMessage() for record in caplog.records)
