"""Progress while the model works: queue position, and the reply as it is being written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.telegram.formatting import TEXT_LIMIT, preview_text, utf16_len
from adapters.telegram.outbox import Outbox
from bot.engine import ReplySink
from bot.errors import PlatformError
from bot.presentation import mood_badge
from bot.types import Mood

logger = logging.getLogger(__name__)

#: Progressive display: start showing a reply once writing it has taken this long after its
#: mood was read (fast replies arrive as one finished message).
STREAM_DELAY_SECONDS = 2.0
#: At most one edit of the in-progress message per this many seconds (private chats).
EDIT_INTERVAL_SECONDS = 1.5
#: In groups Telegram allows about 20 messages a minute, so edits there are spaced further apart
#: (with "typing…" renewed every 4 s that is still ~30 requests a minute while a reply is written;
#: the bot's rate limiter paces them, and a 429 delays rather than drops).
GROUP_EDIT_INTERVAL_SECONDS = 4.0

QUEUE_NOTICE = "⏳ You're number {position} in line; I'll answer as soon as it's your turn."


@dataclass(frozen=True, slots=True)
class InProgress:
    """A message showing a reply while it was written: its id and the text it shows now."""

    message_id: int
    text: str


class TelegramReplySink(ReplySink):
    """Tells the user their place in the queue (once per message)."""

    def __init__(
        self, outbox: Outbox, chat_id: int, *, reply_to: int | None = None, thread_id: int | None = None
    ) -> None:
        self._outbox = outbox
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._lock = asyncio.Lock()
        self._closed = False
        self._queue_notice_sent = False
        #: The message already showing the reply in progress, to be edited into the final reply.
        self.in_progress: InProgress | None = None
        #: Called once the engine has stored the message (a webhook request is answered then).
        self.on_stored: Callable[[], None] | None = None

    async def stored(self) -> None:
        if self.on_stored is not None:
            self.on_stored()

    async def queued(self, position: int) -> None:
        if self._closed or self._queue_notice_sent or position < 1:
            return
        async with self._lock:
            if self._closed or self._queue_notice_sent:
                return
            self._queue_notice_sent = True
            try:
                await self._outbox.text(
                    self._chat_id,
                    QUEUE_NOTICE.format(position=position),
                    reply_to=self._reply_to,
                    thread_id=self._thread_id,
                )
            except PlatformError as error:
                logger.warning("Could not send a queue notice: %s", error)

    async def close(self) -> None:
        """No more progress updates; waits for one still being sent.

        The engine waits (briefly) for progress callbacks before it returns the reply; this also
        covers one that outlasted that wait, so nothing is shown after the final reply.
        """
        self._closed = True
        async with self._lock:
            pass


class StreamingReplySink(TelegramReplySink):
    """Also shows a slow reply while it is written (progressive display).

    Once writing has taken ``stream_delay`` seconds since the mood was read, the mood line and the
    text so far (ending with " …") are sent, then edited at most every ``edit_interval`` seconds
    and never to identical text. Previews are best effort: after one failed request no more are
    tried. The adapter then turns :attr:`in_progress` into the finished reply, so what stays in
    the chat is exactly what a reply sent at once would show.
    """

    def __init__(
        self,
        outbox: Outbox,
        chat_id: int,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        stream_delay: float = STREAM_DELAY_SECONDS,
        edit_interval: float = EDIT_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(outbox, chat_id, reply_to=reply_to, thread_id=thread_id)
        self._stream_delay = stream_delay
        self._edit_interval = edit_interval
        self._badge = ""
        self._started: float | None = None
        self._last_shown = 0.0
        self._given_up = False

    async def mood(self, mood: Mood) -> None:
        self._badge = mood_badge(mood) + "\n"
        self._started = time.monotonic()

    async def partial(self, text: str) -> None:
        if self._closed or self._given_up or not text.strip():
            return
        now = time.monotonic()
        if self._started is None:
            self._started = now
        async with self._lock:
            if self._closed:
                return
            if self.in_progress is None:
                if now - self._started < self._stream_delay:
                    return
            elif now - self._last_shown < self._edit_interval:
                return
            preview = self._badge + preview_text(text, TEXT_LIMIT - utf16_len(self._badge))
            if self.in_progress is not None and preview == self.in_progress.text:
                return  # Telegram refuses an edit that changes nothing
            try:
                await self._show(preview)
            except PlatformError as error:
                self._given_up = True
                logger.warning("Could not show a reply in progress; it will arrive when done: %s", error)
            self._last_shown = time.monotonic()

    async def _show(self, preview: str) -> None:
        if self.in_progress is None:
            sent = await self._outbox.text(
                self._chat_id, preview, reply_to=self._reply_to, thread_id=self._thread_id, retry=False
            )
            self.in_progress = InProgress(sent.message_id, preview)
        else:
            await self._outbox.edit(self._chat_id, self.in_progress.message_id, preview, retry=False)
            self.in_progress = InProgress(self.in_progress.message_id, preview)
