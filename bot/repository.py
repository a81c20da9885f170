"""The storage port: the only way the core reads or writes stored data.

Implemented outside the core (``storage.sqlalchemy_repository``) and chosen by the composition root
(:mod:`bot.bootstrap`); the core sees only this interface and the records of :mod:`bot.records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from bot.records import (
    ChatRecord,
    MessageRecord,
    MessageStatus,
    MoodRecord,
    PendingMessage,
    Stats,
    UserRecord,
)


class Repository(Protocol):
    """Users, chats, messages and mood entries. Every timestamp in and out is aware UTC."""

    async def initialize(self) -> None:
        """Create or migrate the schema."""
        ...

    async def close(self) -> None: ...

    async def ensure_user(self, platform: str, platform_user_id: str, display_name: str) -> UserRecord:
        """Return the user, creating it (or refreshing its display name) as needed."""
        ...

    async def get_user(self, platform: str, platform_user_id: str) -> UserRecord | None: ...

    async def ensure_chat(
        self, platform: str, platform_chat_id: str, is_private: bool, owner_user_id: int | None = None
    ) -> ChatRecord:
        """Return the chat, creating it as needed; a private chat is owned by ``owner_user_id``."""
        ...

    async def add_message(
        self,
        user_id: int,
        chat_id: int,
        role: str,
        text: str,
        *,
        status: MessageStatus = MessageStatus.PENDING,
        reply_to_id: int | None = None,
        created_at: datetime | None = None,
        platform_message_id: str | None = None,
        claimed_by: str | None = None,
        lease_until: datetime | None = None,
    ) -> MessageRecord:
        """Store a message; an incoming one may be claimed (``claimed_by`` until ``lease_until``)
        in the same transaction, so that no other process can take it over while it is answered.

        Raises :class:`bot.errors.DuplicateMessageError` when this chat's ``platform_message_id`` is
        stored already (the platform delivered it twice)."""
        ...

    async def set_message_status(self, message_id: int, status: MessageStatus) -> None:
        """Move a message to ``status``; a finished status also ends any claim on it."""
        ...

    async def claim_message(
        self, message_id: int, instance_id: str, lease_until: datetime, now: datetime
    ) -> bool:
        """Claim an unfinished message that is unclaimed or whose lease expired before ``now``;
        False when another process holds it (or it is finished). Atomic across processes."""
        ...

    async def renew_claims(self, instance_id: str, message_ids: Sequence[int], lease_until: datetime) -> int:
        """Extend the leases ``instance_id`` still holds on ``message_ids``; returns how many."""
        ...

    async def release_claims(self, instance_id: str) -> int:
        """Give up every claim of ``instance_id`` (a clean stop), so a restart can take them at once."""
        ...

    async def finish_reply(
        self,
        message_id: int,
        instance_id: str,
        reply_text: str,
        *,
        user_id: int,
        chat_id: int,
        mood: tuple[str, float] | None,
    ) -> MessageRecord | None:
        """One transaction: the pending message claimed by ``instance_id`` becomes ``replied``,
        its reply is stored and its mood entry (``(label, score)``, if given) logged.

        Returns the stored reply; None (and nothing written) when the claim was lost or the
        message is no longer pending.
        """
        ...

    async def unfinished_before(self, message_id: int, instance_id: str, now: datetime) -> bool:
        """Whether another process holds a live claim (lease not expired at ``now``) on an earlier
        unfinished message of the same user in the same chat: it answers that one first."""
        ...

    async def history(self, user_id: int, chat_id: int, limit: int) -> list[MessageRecord]:
        """The last ``limit`` turns of this user's conversation in this chat, oldest first.

        Only answered user messages and the assistant's replies to them that are still in the
        history (not cleared by ``reset_history``) and not purged.
        """
        ...

    async def reset_history(self, user_id: int, chat_id: int) -> int:
        """Take this user's messages in this chat out of the conversation history; keep moods."""
        ...

    async def add_mood(
        self,
        user_id: int,
        chat_id: int | None,
        message_id: int | None,
        label: str,
        score: float,
        *,
        created_at: datetime | None = None,
    ) -> MoodRecord:
        """Log a mood read; for a ``message_id`` that already has one, the existing entry."""
        ...

    async def moods(
        self, user_id: int, since: datetime | None = None, until: datetime | None = None
    ) -> list[MoodRecord]:
        """This user's mood entries in ``[since, until)``, oldest first."""
        ...

    async def messages_for_user(self, user_id: int) -> list[MessageRecord]:
        """Everything this user wrote and was answered, in every chat, oldest first."""
        ...

    async def forget_user(self, user_id: int) -> dict[str, int]:
        """Delete every row about this user in every table; returns rows deleted per table."""
        ...

    async def set_timezone(self, user_id: int, timezone: str) -> None: ...

    async def set_mood_logging(self, user_id: int, enabled: bool) -> None: ...

    async def pending_messages(self, claimable_at: datetime | None = None) -> list[PendingMessage]:
        """Incoming messages not finished (``pending`` or ``replied``, e.g. left by a crash),
        oldest first; with ``claimable_at``, only those unclaimed or with a lease expired by then."""
        ...

    async def purge_message_texts(self, older_than: datetime) -> int:
        """Blank the text of messages older than ``older_than``; returns how many."""
        ...

    async def stats(self) -> Stats: ...

    async def add_safety_event(self, platform: str) -> None:
        """Count one crisis reply sent on ``platform`` (no user, chat or text is kept with it)."""
        ...


__all__: Sequence[str] = ("Repository",)
