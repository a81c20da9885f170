"""Persistence: the repository interface, its records, and the SQLAlchemy implementation."""

from storage.records import (
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
    """The repository for ``database_url`` (SQLAlchemy handles every supported URL)."""
    from storage.sqlalchemy_repository import SqlAlchemyRepository

    return SqlAlchemyRepository(database_url)
