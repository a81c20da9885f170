"""Deciding whether a Telegram message is meant for the bot, removing the bot's @mention, and
finding the forum topic to answer in.

In private chats every message is for the bot. In groups and supergroups a message is for the bot
only when it mentions ``@botname`` (or a text mention of the bot), replies to one of the bot's
messages, or starts with a command that is not explicitly aimed at another bot (``/mood`` or
``/mood@botname``, but not ``/mood@otherbot``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from telegram import MaybeInaccessibleMessage, Message, MessageEntity
from telegram.constants import ChatType, MessageEntityType


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is, from getMe."""

    id: int
    username: str

    @property
    def mention(self) -> str:
        return f"@{self.username}"


def is_private(message: Message) -> bool:
    return message.chat.type == ChatType.PRIVATE


def topic_of(message: MaybeInaccessibleMessage | None) -> int | None:
    """The forum topic ``message`` was written in (its ``message_thread_id``), or None outside topics.

    Answers must name it: without a thread id (or a reply), a message to a forum lands in General.
    Outside forums a reply's ``message_thread_id`` names its reply thread, which sends do not take.
    """
    if isinstance(message, Message) and message.is_topic_message:
        return message.message_thread_id
    return None


def is_addressed(message: Message, bot: BotIdentity) -> bool:
    """Whether ``message`` is for the bot (always true in private chats)."""
    if is_private(message):
        return True
    reply = message.reply_to_message
    # In forum topics every message "replies" to the topic's first message; only real replies count.
    if reply is not None and reply.from_user is not None and reply.from_user.id == bot.id:
        topic_root = bool(message.is_topic_message) and reply.forum_topic_created is not None
        if not topic_root:
            return True
    text = message.text if message.text is not None else message.caption
    entities = message.entities if message.text is not None else message.caption_entities
    if text is None:
        return False
    if any(_is_bot_mention(text, entity, bot) for entity in entities):
        return True
    for entity in entities:
        if entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
            target = _utf16_slice(text, entity.offset, entity.length).partition("@")[2]
            return not target or target.lower() == bot.username.lower()
    return False


def strip_bot_mention(text: str, entities: Sequence[MessageEntity], bot: BotIdentity) -> str:
    """``text`` without the bot's @mentions (and without ``@botname`` after a leading command).

    ``"@moodmate_bot how are you?"`` becomes ``"how are you?"``; ``"/mood@moodmate_bot 7d"``
    becomes ``"/mood 7d"``. Other text, including other people's mentions, is kept.
    """
    cuts: list[tuple[int, int]] = []
    for entity in entities:
        if _is_bot_mention(text, entity, bot):
            cuts.append((entity.offset, entity.offset + entity.length))
        elif entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
            command = _utf16_slice(text, entity.offset, entity.length)
            name, at, target = command.partition("@")
            if at and target.lower() == bot.username.lower():
                start = entity.offset + _utf16_len(name)
                cuts.append((start, entity.offset + entity.length))
    if not cuts:
        return text
    units = text.encode("utf-16-le")
    for start, end in sorted(cuts, reverse=True):
        before, after = units[: start * 2], units[end * 2 :]
        if before.endswith(b" \x00") and (after.startswith(b" \x00") or not after):
            before = before[:-2]  # "so @bot what" -> "so what", not "so  what"
        units = before + after
    stripped = units.decode("utf-16-le", errors="replace")
    if min(start for start, _ in cuts) == 0:
        stripped = re.sub(r"^[\s,:;]+", "", stripped)  # "@bot, how are you" -> "how are you"
    return stripped.strip()


def _is_bot_mention(text: str, entity: MessageEntity, bot: BotIdentity) -> bool:
    if entity.type == MessageEntityType.MENTION:
        return _utf16_slice(text, entity.offset, entity.length).lower() == bot.mention.lower()
    if entity.type == MessageEntityType.TEXT_MENTION:
        return entity.user is not None and entity.user.id == bot.id
    return False


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf16_slice(text: str, offset: int, length: int) -> str:
    units = text.encode("utf-16-le")
    return units[offset * 2 : (offset + length) * 2].decode("utf-16-le", errors="replace")
