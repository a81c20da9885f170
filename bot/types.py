"""Platform-neutral message types shared by the engine and every adapter."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Platform(StrEnum):
    """Where a message came from."""

    CONSOLE = "console"
    TELEGRAM = "telegram"
    DISCORD = "discord"


class MoodLabel(StrEnum):
    """The three moods moodmate reads."""

    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"


MOOD_LABELS: tuple[MoodLabel, ...] = (MoodLabel.POSITIVE, MoodLabel.NEUTRAL, MoodLabel.NEGATIVE)


@dataclass(frozen=True, slots=True)
class Mood:
    """A mood read: the most likely label, its probability, and all three probabilities."""

    label: MoodLabel
    score: float
    probabilities: tuple[tuple[MoodLabel, float], ...] = ()

    @classmethod
    def from_probabilities(cls, probabilities: dict[MoodLabel, float]) -> Mood:
        """Pick the most likely label from a label -> probability mapping."""
        label = max(MOOD_LABELS, key=lambda lab: probabilities.get(lab, 0.0))
        ordered = tuple((lab, float(probabilities.get(lab, 0.0))) for lab in MOOD_LABELS)
        return cls(label=label, score=float(probabilities.get(label, 0.0)), probabilities=ordered)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message from a person, normalised by an adapter.

    ``addressed_to_bot`` is true in private chats and DMs, and in groups only when the bot was
    mentioned, replied to, or given a command. ``chat_is_private`` tells the engine whether
    answers about a user's own data may be shown to others.
    """

    platform: Platform
    chat_id: str
    user_id: str
    display_name: str
    text: str
    addressed_to_bot: bool = True
    chat_is_private: bool = True
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a reply (an export, a chart)."""

    filename: str
    content: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class Action:
    """A choice offered with a reply; platforms render it as a button, the console as a hint.

    Choosing it is the same as sending ``command`` as a message.
    """

    label: str
    command: str


class ReplyKind(StrEnum):
    """What a reply is, so adapters can decorate it."""

    CHAT = "chat"
    COMMAND = "command"
    NOTICE = "notice"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the engine answers: text, the mood read of the message (chat replies only),
    optional attachments and actions.

    ``answers_id`` is the stored id of the message a chat reply answers: the adapter reports the
    send with ``Engine.delivered`` (or ``Engine.not_delivered``), so that the message is finished.
    """

    text: str
    kind: ReplyKind = ReplyKind.CHAT
    mood: Mood | None = None
    attachments: tuple[Attachment, ...] = ()
    actions: tuple[Action, ...] = ()
    private: bool = False
    answers_id: int | None = None
