"""Progress while the model works: queue position, and the reply as it is being written."""

from __future__ import annotations

import asyncio
import logging
import time

from adapters.telegram.formatting import preview_text
from adapters.telegram.outbox import Outbox
from bot.engine import ReplySink
from bot.errors import PlatformError

logger = logging.getLogger(__name__)

#: When progressive display is on: start showing a reply only if writing it takes this long.
STREAM_DELAY_SECONDS = 2.0
#: At most one edit of the in-progress message per this many seconds.
EDIT_INTERVAL_SECONDS = 1.5

QUEUE_NOTICE = "⏳ You're number {position} in line; I'll answer as soon as it's your turn."


class TelegramReplySink(ReplySink):
    """Tells the user their place in the queue (once per message)."""

    def __init__(self, outbox: Outbox, chat_id: int, *, reply_to: int | None = None) -> None:
        self._outbox = outbox
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._lock = asyncio.Lock()
        self._closed = False
        self._queue_notice_sent = False
        #: A message already showing the reply in progress, to be edited into the final reply.
        self.stream_message_id: int | None = None

    async def queued(self, position: int) -> None:
        if self._closed or self._queue_notice_sent or position < 1:
            return
        async with self._lock:
            if self._closed or self._queue_notice_sent:
                return
            self._queue_notice_sent = True
            try:
                await self._outbox.text(
                    self._chat_id, QUEUE_NOTICE.format(position=position), reply_to=self._reply_to
                )
            except PlatformError:
                logger.warning("Could not send a queue notice", exc_info=True)

    async def close(self) -> None:
        """No more progress updates; waits for one still being sent."""
        self._closed = True
        async with self._lock:
            pass


class StreamingReplySink(TelegramReplySink):
    """Also shows a slow reply while it is written (progressive display).

    Once writing has taken ``stream_delay`` seconds, the text so far is sent, ending with " …", and
    edited at most every ``edit_interval`` seconds. After :meth:`close` the adapter edits that
    message into the first part of the finished reply (:attr:`stream_message_id`), so what stays in
    the chat is always the complete, final text with its mood line.
    """

    def __init__(
        self,
        outbox: Outbox,
        chat_id: int,
        *,
        reply_to: int | None = None,
        stream_delay: float = STREAM_DELAY_SECONDS,
        edit_interval: float = EDIT_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(outbox, chat_id, reply_to=reply_to)
        self._stream_delay = stream_delay
        self._edit_interval = edit_interval
        self._first_partial: float | None = None
        self._last_edit = 0.0
        self._shown = ""

    async def partial(self, text: str) -> None:
        now = time.monotonic()
        if self._first_partial is None:
            self._first_partial = now
        if self._closed or not text.strip() or self._lock.locked():
            return  # a newer text follows, and the final reply always replaces whatever is shown
        async with self._lock:
            if self._closed:
                return
            preview = preview_text(text)
            try:
                if self.stream_message_id is None:
                    if now - self._first_partial < self._stream_delay:
                        return
                    sent = await self._outbox.text(self._chat_id, preview, reply_to=self._reply_to)
                    self.stream_message_id = sent.message_id
                elif now - self._last_edit >= self._edit_interval and preview != self._shown:
                    await self._outbox.edit(self._chat_id, self.stream_message_id, preview)
                else:
                    return
            except PlatformError:
                logger.warning("Could not show a reply in progress", exc_info=True)
                return
            self._shown = preview
            self._last_edit = time.monotonic()
