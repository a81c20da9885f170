"""Message lifecycle: claims with leases on messages, one mood entry per message, one stored
message per platform message.

Duplicate mood entries of one message (left by crashes before this revision) are reduced to the
first one, and a platform message stored twice keeps its platform id on the first row only, so the
unique indexes can be built.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("claimed_by", sa.String(64), nullable=True))
    op.add_column("messages", sa.Column("lease_until", sa.DateTime, nullable=True))
    op.execute(
        "DELETE FROM mood_entries WHERE message_id IS NOT NULL AND id NOT IN "
        "(SELECT first_id FROM (SELECT MIN(id) AS first_id FROM mood_entries "
        "WHERE message_id IS NOT NULL GROUP BY message_id) AS firsts)"
    )
    op.create_index("uq_mood_entries_message", "mood_entries", ["message_id"], unique=True)
    op.execute(
        "UPDATE messages SET platform_message_id = NULL WHERE platform_message_id IS NOT NULL "
        "AND id NOT IN (SELECT first_id FROM (SELECT MIN(id) AS first_id FROM messages "
        "WHERE platform_message_id IS NOT NULL GROUP BY chat_id, platform_message_id) AS firsts)"
    )
    op.create_index(
        "uq_messages_platform_message", "messages", ["chat_id", "platform_message_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_messages_platform_message", "messages")
    op.drop_index("uq_mood_entries_message", "mood_entries")
    op.drop_column("messages", "lease_until")
    op.drop_column("messages", "claimed_by")
