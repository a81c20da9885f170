"""Schema creation and forward-only migrations, run at every start."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection, inspect, select, text

from storage.tables import SCHEMA_VERSION, Base, SchemaInfo

logger = logging.getLogger(__name__)


def _add_platform_message_id(connection: Connection) -> None:
    """1 -> 2: messages remember the platform's id of a user's message."""
    columns = {column["name"] for column in inspect(connection).get_columns("messages")}
    if "platform_message_id" not in columns:
        connection.execute(text("ALTER TABLE messages ADD COLUMN platform_message_id VARCHAR(64)"))


#: Steps from version N to N+1, keyed by N. Version 1 is the first schema (created by create_all).
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _add_platform_message_id}


def migrate(connection: Connection) -> None:
    """Create missing tables, then run every migration step between the stored and current version."""
    had_schema = inspect(connection).has_table(SchemaInfo.__tablename__)
    Base.metadata.create_all(connection)
    version = connection.execute(select(SchemaInfo.version).where(SchemaInfo.id == 1)).scalar()
    if version is None:
        connection.execute(SchemaInfo.__table__.insert().values(id=1, version=SCHEMA_VERSION))
        logger.info("Created database schema version %d", SCHEMA_VERSION)
        return
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"The database schema is version {version}, newer than this moodmate "
            f"({SCHEMA_VERSION}); upgrade moodmate."
        )
    while version < SCHEMA_VERSION:
        logger.info("Migrating database schema from version %d", version)
        MIGRATIONS[version](connection)
        version += 1
    connection.execute(SchemaInfo.__table__.update().where(SchemaInfo.id == 1).values(version=version))
    if not had_schema:
        logger.debug("Schema info table created")
