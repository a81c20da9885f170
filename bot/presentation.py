"""Platform-neutral presentation helpers: mood badges and message splitting."""

from __future__ import annotations

import re

from bot.types import Mood, MoodLabel

MOOD_EMOJI: dict[MoodLabel, str] = {
    MoodLabel.POSITIVE: "🙂",
    MoodLabel.NEUTRAL: "😐",
    MoodLabel.NEGATIVE: "😟",
}

_PARAGRAPH = re.compile(r"\n\s*\n")
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"(?<=[.!?。！？…])\s+|(?<=[。！？])")
_WORD = re.compile(r"\s+")


def mood_tag(mood: Mood) -> str:
    """``[negative 0.91]``: the console's and logs' compact form."""
    return f"[{mood.label.value} {mood.score:.2f}]"


def mood_badge(mood: Mood) -> str:
    """``😟 negative 0.91``: a compact form for chat platforms."""
    return f"{MOOD_EMOJI[mood.label]} {mood.label.value} {mood.score:.2f}"


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters whose concatenation is ``text``.

    Cuts prefer paragraph breaks, then line breaks, then sentence ends, then spaces; only a run
    with none of those is cut mid-word. Separators stay with the part before the cut.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _best_cut(rest, limit)
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest or not parts:
        parts.append(rest)
    return parts


def _best_cut(text: str, limit: int) -> int:
    window = text[: limit + 1]
    for pattern in (_PARAGRAPH, _LINE, _SENTENCE, _WORD):
        ends = [match.end() for match in pattern.finditer(window) if 0 < match.end() <= limit]
        # Only accept a cut that keeps the part reasonably full, so we do not send slivers.
        good = [end for end in ends if end >= limit // 3]
        if good:
            return good[-1]
    # No boundary: never split a surrogate pair or a combining sequence start.
    cut = limit
    while cut > 1 and _is_continuation(text[cut]):
        cut -= 1
    return cut


def _is_continuation(char: str) -> bool:
    import unicodedata

    return unicodedata.combining(char) != 0 or char in "\u200d\ufe0f"
