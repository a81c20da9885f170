"""The port each chat platform implements, so that one reply lifecycle drives them all.

A :class:`ReplyPort` stands for one place to answer in (a private chat, a group or channel, a
forum topic, an interaction) and the message it answers. It translates: texts, buttons and files
become the platform's requests, the platform's errors become :class:`RefusedError`,
:class:`TransientError` or another ``PlatformError``. Everything else (when to show what, what to
edit, what to delete, whom to tell) is :mod:`bot.delivery.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from bot.delivery.timing import EDIT_INTERVAL_SECONDS, STREAM_DELAY_SECONDS
from bot.errors import PlatformError
from bot.types import Action, Attachment, Mood, Reply


class RefusedError(PlatformError):
    """The platform refused for good (blocked, never started, DMs closed, no permission): the same
    chat would refuse an apology too, so none is sent there."""


class TransientError(PlatformError):
    """The request failed on the way (its SDK did not retry it); trying again may succeed.

    ``retry_after``: the wait the platform asked for, if it named one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Posted:
    """A message a port posted: the platform's handle for it (``ref``) and the text it shows."""

    ref: object
    text: str | None


@dataclass(frozen=True, slots=True)
class PortLimits:
    """A place's pace: how often "typing…" is renewed, how often a preview may change, and how
    long a reply is written before it is shown in progress (``None``: never shown unfinished)."""

    typing_interval: float
    edit_interval: float = EDIT_INTERVAL_SECONDS
    stream_delay: float | None = STREAM_DELAY_SECONDS


@dataclass(frozen=True, slots=True)
class PrivateNotes:
    """What a group is told when an answer about someone's own data goes to their private chat."""

    sent: str
    refused: str


@dataclass(frozen=True, slots=True)
class Place:
    """Where a port answers: ``key`` (replies for the same key share one "typing…"), whether it is
    ``private`` (only the person answered sees it: a private chat, a DM, an ephemeral answer, so
    answers about their own data are posted right there), its pace and its private-answer notes."""

    key: Hashable
    private: bool
    limits: PortLimits
    notes: PrivateNotes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to post: its text (already fitting one message, or None for files alone), the
    buttons and the files that go with it."""

    text: str | None
    actions: tuple[Action, ...] = ()
    attachments: tuple[Attachment, ...] = ()


class ReplyPort(Protocol):
    """One place on one platform, answering one message (see the module docstring)."""

    @property
    def place(self) -> Place:
        """Where it answers."""
        ...

    def render(self, reply: Reply) -> list[str]:
        """``reply`` as message texts, split by the platform's rules below its length limit (the
        mood line first for chat replies); empty when it has no text."""
        ...

    def preview(self, mood: Mood, text: str) -> str | None:
        """The message showing a reply still being written (mood line and ``text`` so far, cut to
        one message, marked unfinished), or None while there is nothing to show."""
        ...

    async def post(self, message: Outgoing, *, quote: bool, retry: bool = True) -> Posted:
        """Post one message; ``quote``: it answers the message this place answers (the first of a
        reply). ``retry=False``: best effort, one try."""
        ...

    async def edit(self, posted: Posted, message: Outgoing, *, retry: bool = True) -> Posted:
        """Replace a message this port posted (an edit to the same text is no error)."""
        ...

    async def delete(self, posted: Posted) -> None:
        """Delete a message this port posted (one try)."""
        ...

    async def typing(self) -> None:
        """Show "typing…" once (one try)."""
        ...

    async def open_private(self) -> ReplyPort:
        """The private chat with the person this place answers; ``RefusedError`` if there is none."""
        ...
