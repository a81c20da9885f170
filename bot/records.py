"""Plain, immutable rows the repository (:mod:`bot.repository`) hands out; no SQLAlchemy object leaves
``storage``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class MessageStatus(StrEnum):
    """Where an incoming message is in its life.

    ``pending`` (received, stored before any inference) -> ``replied`` (the reply and the mood
    entry stored with it, in one transaction) -> ``answered`` (the platform accepted the send).
    Or it ends ``failed``, ``apologised`` (too old when recovered: an apology was delivered) or
    ``refused`` (its sender was no longer admitted by the allowlists when it was recovered).
    While a process works on a pending or replied message it holds a claim on it (the message's
    ``claimed_by`` and ``lease_until``), renewed while it works; only an unclaimed message or one
    whose lease expired may be taken over.
    """

    PENDING = "pending"
    REPLIED = "replied"
    ANSWERED = "answered"
    FAILED = "failed"
    APOLOGISED = "apologised"
    REFUSED = "refused"


#: The statuses of a message that is not finished: recovery takes these over.
UNFINISHED = (MessageStatus.PENDING, MessageStatus.REPLIED)


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
    #: The process answering this message and until when its claim holds (None when unclaimed).
    claimed_by: str | None = None
    lease_until: datetime | None = None


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
    """An incoming message that was stored but never delivered an answer (e.g. the process died).

    ``reply`` is its stored reply when it got as far as ``replied`` (then ``mood`` is the mood
    entry logged with it, if any): such a message is re-sent, never answered anew.
    """

    message: MessageRecord
    user: UserRecord
    chat: ChatRecord
    reply: MessageRecord | None = None
    mood: MoodRecord | None = None


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
