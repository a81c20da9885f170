"""Plain, immutable rows handed out by the repository; no SQLAlchemy object leaves ``storage``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class MessageStatus(StrEnum):
    """Where an incoming message is in its life: stored first, answered or failed later."""

    PENDING = "pending"
    ANSWERED = "answered"
    FAILED = "failed"
    APOLOGISED = "apologised"


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    platform: str
    platform_user_id: str
    display_name: str
    timezone: str
    mood_logging: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ChatRecord:
    id: int
    platform: str
    platform_chat_id: str
    is_private: bool


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message. ``text`` is None once the retention job has purged it."""

    id: int
    user_id: int
    chat_id: int
    role: str
    text: str | None
    status: str
    created_at: datetime
    in_history: bool
    reply_to_id: int | None = None
    #: The platform's id of a user's message, when the adapter gave one.
    platform_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class MoodRecord:
    """One logged mood read. ``created_at`` is timezone-aware UTC."""

    id: int
    user_id: int
    chat_id: int | None
    message_id: int | None
    label: str
    score: float
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An incoming message that was stored but never answered (e.g. the process died)."""

    message: MessageRecord
    user: UserRecord
    chat: ChatRecord


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts for operators; never any message text."""

    users: int
    chats: int
    messages: int
    mood_entries: int
    moods_per_day: tuple[tuple[str, str, int], ...]  # (ISO day in UTC, label, count)
    #: Crisis replies sent (fixed replies with crisis resources); counted, never linked to anyone.
    crisis_replies: int = 0
