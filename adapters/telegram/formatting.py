"""Turning engine replies into Telegram message texts.

Texts are sent as plain text (no ``parse_mode``), so nothing a model writes (``<b>``, ``*``, ``_``,
``[``) can make Telegram fail with "can't parse entities": it is shown exactly as written.
"""

from __future__ import annotations

from bot.presentation import mood_badge, split_message
from bot.types import Reply, ReplyKind

#: Telegram's limit for one message's text, and for a photo or document caption.
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
#: Shown after a reply that is still being written.
IN_PROGRESS_MARK = " …"


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (how Telegram measures entity offsets; emoji count twice)."""
    return len(text.encode("utf-16-le")) // 2


def badge_line(reply: Reply) -> str:
    """The compact mood line that starts a chat reply (``"🙂 positive 0.90\\n"``), or ``""``."""
    if reply.kind is ReplyKind.CHAT and reply.mood is not None:
        return mood_badge(reply.mood) + "\n"
    return ""


def reply_texts(reply: Reply, limit: int = TEXT_LIMIT) -> list[str]:
    """The message texts for ``reply``: the badge line, then the reply, split below ``limit``.

    Parts are cut at paragraph, line, sentence or word boundaries; apart from the badge line their
    concatenation is exactly ``reply.text``. Each part also stays within ``limit`` UTF-16 code units,
    so the split is safe however Telegram counts emoji. Whitespace-only parts (which Telegram
    refuses) are merged into a neighbour.
    """
    prefix = badge_line(reply)
    parts = split_for_telegram(reply.text, limit, first_prefix=prefix)
    if not parts:
        return [prefix.rstrip("\n")] if prefix else []
    parts[0] = prefix + parts[0]
    return parts


def split_for_telegram(text: str, limit: int = TEXT_LIMIT, *, first_prefix: str = "") -> list[str]:
    """Split ``text`` into parts that fit ``limit`` (the first one together with ``first_prefix``).

    Sizes are checked in both characters and UTF-16 code units. A whitespace-only piece (Telegram
    refuses those) is glued to the part before it, or dropped when it cannot be shown anyway.
    """
    prefix_size = utf16_len(first_prefix)
    if prefix_size >= limit:
        raise ValueError("prefix leaves no room for text")
    parts: list[str] = []
    rest = text
    while rest:
        room = limit - (prefix_size if not parts else 0)
        chunk = _fit(rest, room)
        rest = rest[len(chunk) :]
        if chunk.strip():
            parts.append(chunk)
            continue
        last_room = limit - (prefix_size if len(parts) == 1 else 0)
        if parts and utf16_len(parts[-1] + chunk) <= last_room:
            parts[-1] += chunk
    return parts


def _fit(text: str, room: int) -> str:
    """The first piece ``split_message`` cuts from ``text`` that fits ``room`` UTF-16 code units."""
    units = 0
    fitting = 0
    for char in text:
        units += 2 if ord(char) > 0xFFFF else 1
        if units > room:
            break
        fitting += 1
    if fitting == len(text):
        return text
    return split_message(text, max(1, fitting))[0]


def preview_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """A reply that is still being written, cut to fit one message, marked as unfinished."""
    room = limit - len(IN_PROGRESS_MARK)
    head = text if utf16_len(text) <= room else split_for_telegram(text, room)[0]
    return head.rstrip() + IN_PROGRESS_MARK


def caption_for(text: str) -> str | None:
    """``text`` as a caption if it fits Telegram's caption limit, else None."""
    stripped = text.strip()
    if stripped and utf16_len(stripped) <= CAPTION_LIMIT:
        return stripped
    return None
