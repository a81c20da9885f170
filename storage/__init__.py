"""Persistence: the SQLAlchemy implementation of the core's storage port (:mod:`bot.repository`).

Only the composition root (:mod:`bot.bootstrap`) imports this package; it depends on nothing of the
core but its records (:mod:`bot.records`), its port and its errors (:mod:`bot.errors`).
"""

from bot.repository import Repository

__all__ = ["open_repository"]


def open_repository(database_url: str) -> Repository:
    """The repository for ``database_url``: SQLite or PostgreSQL, plain or async URL forms.

    A URL moodmate cannot use raises :class:`bot.errors.ConfigurationError` (one sentence).
    """
    from storage.sqlalchemy_repository import SqlAlchemyRepository

    return SqlAlchemyRepository(database_url)
