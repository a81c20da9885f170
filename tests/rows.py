"""Row counts straight from the database, to prove what the repository deleted (or kept)."""

from __future__ import annotations

from sqlalchemy import text

from bot.repository import Repository
from storage.sqlalchemy_repository import SqlAlchemyRepository

#: Every table with rows about a user, and the column naming them.
USER_COLUMNS = {"users": "id", "chats": "owner_user_id", "messages": "user_id", "mood_entries": "user_id"}


async def count_rows(repository: Repository, user_id: int) -> dict[str, int]:
    """Rows that mention ``user_id``, per table, counted with SQL of the test's own."""
    assert isinstance(repository, SqlAlchemyRepository)
    async with repository.engine.connect() as connection:
        counts: dict[str, int] = {}
        for table, column in USER_COLUMNS.items():
            query = text(f"SELECT count(*) FROM {table} WHERE {column} = :user_id")
            counts[table] = int((await connection.execute(query, {"user_id": user_id})).scalar_one())
        return counts
