"""Persistence: the repository interface, its records, and the SQLAlchemy implementation."""

from storage.records import (
    UNFINISHED,
    ChatRecord,
    MessageRecord,
    MessageStatus,
    MoodRecord,
    PendingMessage,
    Stats,
    UserRecord,
)
from storage.repository import Repository

__all__ = [
    "UNFINISHED",
    "ChatRecord",
    "MessageRecord",
    "MessageStatus",
    "MoodRecord",
    "PendingMessage",
    "Repository",
    "Stats",
    "UserRecord",
    "open_repository",
]


def open_repository(database_url: str) -> Repository:
    """The repository for ``database_url``: SQLite or PostgreSQL, plain or async URL forms.

    A URL moodmate cannot use raises :class:`bot.errors.ConfigurationError` (one sentence).
    """
    from storage.sqlalchemy_repository import SqlAlchemyRepository

    return SqlAlchemyRepository(database_url)
