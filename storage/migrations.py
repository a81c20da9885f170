"""Schema creation and migrations, run at every start: Alembic, on the caller's connection.

The scripts live in ``storage/schema`` (shipped inside the package). A database made by the
in-house migrator that came before (table ``schema_info``, version 1 or 2) is brought to
version 2 the old way, stamped as Alembic's revision ``0002``, and migrated on from there.

Concurrent first starts are safe: on PostgreSQL the whole migration runs under a
transaction-level advisory lock (taken here); on SQLite the repository holds a file lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from storage.tables import SCHEMA_VERSION

logger = logging.getLogger(__name__)

SCRIPTS = Path(__file__).with_name("schema")
#: The key of the PostgreSQL advisory lock held while the schema is migrated.
MIGRATION_LOCK_KEY = 7_246_163_001
#: The Alembic revision that equals the in-house migrator's last version.
LEGACY_REVISION = "0002"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this moodmate knows."""
    head = ScriptDirectory(str(SCRIPTS)).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _add_platform_message_id(connection: Connection) -> None:
    """In-house 1 -> 2: messages remember the platform's id of a user's message."""
    columns = {column["name"] for column in inspect(connection).get_columns("messages")}
    if "platform_message_id" not in columns:
        connection.execute(text("ALTER TABLE messages ADD COLUMN platform_message_id VARCHAR(64)"))


def _adopt_legacy_schema(connection: Connection, config: Config) -> None:
    """Bring an in-house-migrated database (schema_info) to version 2 and stamp it for Alembic."""
    version = connection.execute(text("SELECT version FROM schema_info WHERE id = 1")).scalar()
    if version is None:
        return
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"The database schema is version {version}, newer than this moodmate "
            f"({SCHEMA_VERSION}); upgrade moodmate."
        )
    if version < 2:
        logger.info("Migrating database schema from version %d", version)
        _add_platform_message_id(connection)
        connection.execute(text("UPDATE schema_info SET version = 2 WHERE id = 1"))
    command.stamp(config, LEGACY_REVISION)


def migrate(connection: Connection) -> None:
    """Create or migrate the schema to the newest revision (inside the caller's transaction)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    config = _config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "schema_info" in tables:
        _adopt_legacy_schema(connection, config)
    before = current_revision(connection)
    head = head_revision()
    if before == head:
        return
    known = {script.revision for script in ScriptDirectory(str(SCRIPTS)).walk_revisions()}
    if before is not None and before not in known:
        raise RuntimeError(
            f"The database schema is at revision {before}, newer than this moodmate knows; upgrade moodmate."
        )
    command.upgrade(config, "head")
    logger.info("Database schema %s -> %s", before or "(new)", head)
