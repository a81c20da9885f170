"""What the engine asks the safety module for each chat message: answer it with the fixed crisis
reply, or generate a reply (with the safety prompt and check in the turns after a crisis reply)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bot.model.base import ChatTurn
from bot.safety.detector import Assessment, assess
from bot.safety.replies import (
    agrees_with_hopelessness,
    caring_line,
    crisis_reply,
    is_crisis_reply,
    safety_prompt,
)

logger = logging.getLogger(__name__)

#: How many earlier user messages decide a message that is ambiguous alone.
CONTEXT_MESSAGES = 3
#: For how many turns of the conversation (user and assistant) after a crisis reply the replies
#: are written with the safety prompt and checked.
FOLLOW_UP_TURNS = 10


@dataclass(frozen=True, slots=True)
class SafetyTurn:
    """The safety module's decision for one message.

    ``crisis_reply`` is set when the message gets the fixed crisis reply (no model text at all).
    Otherwise, with ``follow_up`` (a crisis reply is among the recent turns), the reply is written
    with the safety prompt, not streamed, and checked before it is sent.
    """

    user_text: str
    assessment: Assessment
    crisis_reply: str | None = None
    follow_up: bool = False

    @property
    def crisis(self) -> bool:
        return self.crisis_reply is not None

    @property
    def may_stream(self) -> bool:
        """Whether generated text may be shown while it is written (not before it is checked)."""
        return not self.follow_up

    def system_prompt(self, base: str) -> str:
        return safety_prompt(base, self.user_text) if self.follow_up else base

    def checked(self, reply: str) -> str:
        """``reply``, or the fixed caring line when it agrees with hopelessness after a crisis."""
        if self.follow_up and (agrees_with_hopelessness(reply) or assess(reply).crisis):
            logger.info("A reply after a crisis reply agreed with hopelessness; sent the caring line")
            return caring_line(self.user_text)
        return reply


class SafetyGuard:
    """Detects crisis messages and words their answers; ``resources`` is ``MOODMATE_CRISIS_RESOURCES``."""

    def __init__(self, resources: str | None = None) -> None:
        self.resources = resources

    def review(self, text: str, history: Sequence[ChatTurn] = ()) -> SafetyTurn:
        """Decide how to answer ``text``; ``history`` is the conversation before it, oldest first
        (a last turn equal to ``text`` itself is ignored)."""
        earlier = list(history)
        if earlier and earlier[-1].role == "user" and earlier[-1].content == text:
            earlier.pop()
        recent_user = [turn.content for turn in earlier if turn.role == "user"][-CONTEXT_MESSAGES:]
        recent = earlier[-FOLLOW_UP_TURNS:]
        follow_up = any(turn.role == "assistant" and is_crisis_reply(turn.content) for turn in recent)
        assessment = assess(text, recent_user)
        if assessment.crisis:
            last_assistant = next((turn for turn in reversed(earlier) if turn.role == "assistant"), None)
            repeat = last_assistant is not None and is_crisis_reply(last_assistant.content)
            reply = crisis_reply(text, self.resources, repeat=repeat)
            return SafetyTurn(text, assessment, crisis_reply=reply, follow_up=True)
        return SafetyTurn(text, assessment, follow_up=follow_up)

    def fallback(self, text: str) -> str | None:
        """The crisis reply for ``text`` judged alone, for when answering it failed; else None."""
        return crisis_reply(text, self.resources) if assess(text).crisis else None
