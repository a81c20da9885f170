"""Turning engine replies into Discord message texts, and Discord message texts into plain text.

Discord refuses messages over 2,000 characters, so long replies are split with
:func:`bot.presentation.split_message` (paragraph, line, sentence, then word boundaries). A cut
inside a fenced code block closes the fence at the end of the part and reopens it, with the same
language tag, at the start of the next, so every part renders as code on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.presentation import mood_badge, split_message
from bot.types import Mood, Reply, ReplyKind

if TYPE_CHECKING:
    import discord

#: Discord's limit for a message's content.
MESSAGE_LIMIT = 2000
#: Ends the text of a reply that is still being written.
IN_PROGRESS_MARK = " …"

FENCE = "```"
_FENCE_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.\-]*(?=\n)")
_DANGLING_FENCE = re.compile(r"```[A-Za-z0-9_+#.\-]*\n?")
_CLOSING_RESERVE = len("\n" + FENCE)
#: Longer "language tags" are ordinary text after an untagged fence; they are not repeated.
_MAX_LANGUAGE = 32


@dataclass(frozen=True, slots=True)
class Part:
    """One message of a split text: the original ``body`` plus the fence markers added around it."""

    prefix: str
    body: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.suffix


def utf16_length(text: str) -> int:
    """Length as Discord's clients count it (UTF-16 code units); never less than ``len(text)``."""
    return len(text.encode("utf-16-le")) // 2


def fence_state(text: str, open_language: str | None) -> str | None:
    """The language of the code fence still open after ``text`` ("" for an untagged fence), or None.

    ``open_language`` is the fence open before ``text`` starts (None when outside any fence).
    Discord opens and closes a code block at every triple backtick, wherever it stands.
    """
    state = open_language
    position = text.find(FENCE)
    while position != -1:
        after = position + len(FENCE)
        if state is None:
            match = _FENCE_LANGUAGE.match(text, after)
            state = match.group(0) if match and len(match.group(0)) <= _MAX_LANGUAGE else ""
        else:
            state = None
        position = text.find(FENCE, after)
    return state


def split_parts(text: str, limit: int = MESSAGE_LIMIT) -> list[Part]:
    """Split ``text`` into parts whose ``text`` fits ``limit``, with code fences balanced in each.

    ``"".join(part.body for part in parts) == text``.
    """
    parts: list[Part] = []
    rest = text
    open_language: str | None = None
    while True:
        prefix = "" if open_language is None else f"{FENCE}{open_language}\n"
        whole = _closed(prefix, rest, open_language)
        if utf16_length(whole.text) <= limit:
            parts.append(whole)
            return parts
        budget = limit - len(prefix) - _CLOSING_RESERVE
        if budget < 1:
            raise ValueError("limit is too small for the code fence markers")
        part = _next_part(prefix, rest, open_language, budget, limit)
        parts.append(part)
        rest = rest[len(part.body) :]
        open_language = fence_state(part.body, open_language)


def split_for_discord(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The message texts to send for ``text``: each at most ``limit`` characters, fences balanced."""
    return [part.text for part in split_parts(text, limit)]


def _closed(prefix: str, body: str, open_language: str | None) -> Part:
    if fence_state(body, open_language) is None:
        return Part(prefix, body, "")
    return Part(prefix, body, FENCE if body.endswith("\n") or not body else "\n" + FENCE)


def _next_part(prefix: str, rest: str, open_language: str | None, budget: int, limit: int) -> Part:
    while True:
        # split_message only looks at the first budget + 1 characters to choose its first cut.
        cut = len(split_message(rest[: budget + 1], budget)[0])
        cut = _outside_backtick_run(rest, cut)
        cut = _before_dangling_fence(rest[:cut], open_language)
        part = _closed(prefix, rest[:cut], open_language)
        excess = utf16_length(part.text) - limit
        if excess <= 0:
            return part
        # Characters outside the BMP count twice on Discord: each one dropped saves one or two units.
        smaller = max(1, budget - (excess + 1) // 2)
        if smaller == budget:
            raise ValueError("limit is too small for the code fence markers")
        budget = smaller


def _outside_backtick_run(text: str, cut: int) -> int:
    """Never cut through a run of backticks (it would break a fence marker in two)."""
    if not 0 < cut < len(text) or text[cut - 1] != "`" or text[cut] != "`":
        return cut
    start = cut
    while start > 0 and text[start - 1] == "`":
        start -= 1
    return start or cut


def _before_dangling_fence(chunk: str, open_language: str | None) -> int:
    """Move a cut that lands just after an opening fence line back before it: no empty code blocks."""
    opening = chunk.rfind(FENCE)
    if opening <= 0 or not _DANGLING_FENCE.fullmatch(chunk, opening):
        return len(chunk)
    if fence_state(chunk[:opening], open_language) is not None:
        return len(chunk)  # that marker closes a block
    return opening


def reply_text(reply: Reply) -> str:
    """The text to show for ``reply``: chat replies carry their mood badge on the first line."""
    text = reply.text
    if reply.kind is ReplyKind.CHAT and reply.mood is not None:
        return f"{mood_badge(reply.mood)}\n{text}"
    return text


def in_progress_text(mood: Mood, text_so_far: str, limit: int = MESSAGE_LIMIT) -> str | None:
    """The message showing a chat reply while it is written, or None while there is nothing to show.

    Badge line and text as :func:`reply_text` lays them out, cut to the first message (fences
    balanced, as in the final split) and ending with :data:`IN_PROGRESS_MARK`.
    """
    text = text_so_far.strip()
    if not text:
        return None
    first = split_parts(f"{mood_badge(mood)}\n{text}", limit - utf16_length(IN_PROGRESS_MARK))[0]
    return first.text.rstrip() + IN_PROGRESS_MARK


# --- incoming ---------------------------------------------------------------------------------

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")


def strip_bot_mentions(content: str, bot_id: int, bot_role_ids: frozenset[int] = frozenset()) -> str:
    """``content`` without the mentions of the bot itself (``<@id>``, ``<@!id>``, its managed role)."""
    text = _USER_MENTION.sub(lambda m: "" if int(m.group(1)) == bot_id else m.group(0), content)
    text = _ROLE_MENTION.sub(lambda m: "" if int(m.group(1)) in bot_role_ids else m.group(0), text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def readable_mentions(content: str, message: discord.Message) -> str:
    """Replace the remaining mention markup with names, as people see them in the client."""
    users = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role.name for role in message.role_mentions}
    guild = message.guild

    def user(match: re.Match[str]) -> str:
        name = users.get(int(match.group(1)))
        return f"@{name}" if name else "@someone"

    def role(match: re.Match[str]) -> str:
        name = roles.get(int(match.group(1)))
        return f"@{name}" if name else "@role"

    def channel(match: re.Match[str]) -> str:
        found = guild.get_channel(int(match.group(1))) if guild is not None else None
        return f"#{found.name}" if found is not None else "#channel"

    text = _USER_MENTION.sub(user, content)
    text = _ROLE_MENTION.sub(role, text)
    return _CHANNEL_MENTION.sub(channel, text)
