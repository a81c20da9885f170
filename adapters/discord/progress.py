"""What people see while moodmate thinks: a typing indicator and, when waiting, the queue position.

The reply shown while it is written is in :mod:`adapters.discord.streaming`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import discord

from adapters.discord.sending import NO_MENTIONS
from bot.engine import ReplySink

logger = logging.getLogger(__name__)

#: Discord shows "is typing…" for about ten seconds per trigger.
TYPING_REFRESH_SECONDS = 8.0


def queue_notice(position: int) -> str:
    ahead = "1 message" if position == 1 else f"{position} messages"
    return f"⏳ I'm answering {ahead} ahead of yours; I'll be with you as soon as I can."


class TypingIndicator:
    """Keeps "moodmate is typing…" on until the block ends. Cosmetic: failures are only logged."""

    def __init__(self, channel: discord.abc.Messageable) -> None:
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self._again = asyncio.Event()

    async def __aenter__(self) -> TypingIndicator:
        self._task = asyncio.create_task(self._keep_typing(), name="discord-typing")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def refresh(self) -> None:
        """Show "typing…" again now: Discord hides it when moodmate posts a message."""
        self._again.set()

    async def _keep_typing(self) -> None:
        while True:
            self._again.clear()
            try:
                await self._channel.typing()
            except Exception as error:  # cosmetic: never let it end the reply it decorates
                logger.debug("Typing indicator failed: %s", type(error).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._again.wait(), TYPING_REFRESH_SECONDS)


class ChannelReplySink(ReplySink):
    """Posts the queue position when a message has to wait, and removes it once answered."""

    def __init__(self, message: discord.Message, *, as_reply: bool) -> None:
        self._message = message
        self._as_reply = as_reply
        self._notice: discord.Message | None = None
        self._position: int | None = None

    async def queued(self, position: int) -> None:
        if position == self._position:
            return
        self._position = position
        text = queue_notice(position)
        try:
            if self._notice is None:
                reference = self._message.to_reference(fail_if_not_exists=False) if self._as_reply else None
                self._notice = await self._message.channel.send(
                    text,
                    reference=reference,
                    allowed_mentions=NO_MENTIONS,  # type: ignore[arg-type]
                )
            else:
                await self._notice.edit(content=text, allowed_mentions=NO_MENTIONS)
        except (discord.DiscordException, OSError) as error:
            logger.warning("Could not show the queue position on Discord (%s)", type(error).__name__)

    async def finish(self) -> discord.Message | None:
        """No more progress to show; the message showing the reply in progress, if one was posted."""
        return None

    async def clear(self) -> None:
        """Delete the queue notice, if one was posted."""
        notice, self._notice = self._notice, None
        if notice is None:
            return
        try:
            await notice.delete()
        except (discord.DiscordException, OSError) as error:
            logger.debug("Could not delete the queue notice (%s)", type(error).__name__)
