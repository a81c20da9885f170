"""Progressive display: a slow chat reply is shown while the model writes it.

:class:`StreamingReplySink` learns the mood first, then the reply text so far (from the engine, at
most about once a second). It never blocks the engine: each call only records what is new, and a
background task talks to Discord at its own pace.

* Nothing is shown for ``delay`` seconds after the mood is known, so a quick reply still arrives as
  one message, with no edits.
* Then the badge line and the text so far, ending with " …", are posted (as a reply in servers,
  with ``allowed_mentions`` none, like every message moodmate sends), and edited with newer text
  at most once per ``edit_interval`` seconds. discord.py waits out any 429 on those requests.
* :meth:`StreamingReplySink.finish` stops the updates and hands the posted message to the adapter,
  which edits it into the first part of the final reply. If an update fails, updates stop; the
  final text still replaces it (or is sent anew when editing fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import discord

from adapters.discord.formatting import in_progress_text
from adapters.discord.progress import ChannelReplySink, TypingIndicator
from adapters.discord.sending import NO_MENTIONS, call_discord
from bot.errors import PlatformError
from bot.types import Mood

logger = logging.getLogger(__name__)

#: Show a reply in progress only when writing it takes longer than this (after the mood is known).
STREAM_DELAY_SECONDS = 1.5
#: At least this long between two requests that show a reply in progress.
EDIT_INTERVAL_SECONDS = 1.5
#: How long :meth:`StreamingReplySink.finish` waits for an update already on its way to Discord.
IN_FLIGHT_WAIT_SECONDS = 10.0


class StreamingReplySink(ChannelReplySink):
    """Queue position, plus the reply shown while it is written (see the module docstring)."""

    def __init__(
        self,
        message: discord.Message,
        *,
        as_reply: bool,
        typing: TypingIndicator | None = None,
        on_posted: Callable[[discord.Message], None] | None = None,
        delay: float = STREAM_DELAY_SECONDS,
        edit_interval: float = EDIT_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(message, as_reply=as_reply)
        self._typing = typing
        self._on_posted = on_posted
        self._delay = delay
        self._edit_interval = edit_interval
        self._latest = ""
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._request: asyncio.Task[bool] | None = None
        self._finished = False
        #: The message showing the reply in progress, once posted.
        self.posted: discord.Message | None = None

    async def mood(self, mood: Mood) -> None:
        if self._finished or self._runner is not None:
            return
        self._runner = asyncio.create_task(self._run(mood), name="discord-progressive-reply")

    async def partial(self, text: str) -> None:
        if self._finished:
            return
        self._latest = text
        self._changed.set()

    async def finish(self) -> discord.Message | None:
        """Stop showing progress; the posted in-progress message (to edit into the reply), if any."""
        self._finished = True
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        elif runner is not None and not runner.cancelled() and runner.exception() is not None:
            logger.error("Showing a reply in progress failed", exc_info=runner.exception())
        request, self._request = self._request, None
        if request is not None and not request.done():
            # Let a post already on its way land, so that it is edited rather than left behind.
            try:
                await asyncio.wait_for(request, IN_FLIGHT_WAIT_SECONDS)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("Discord did not answer an in-progress update in time; not waiting longer")
        return self.posted

    async def clear(self) -> None:
        await self.finish()
        await super().clear()

    async def _run(self, mood: Mood) -> None:
        await asyncio.sleep(self._delay)
        seen = ""
        shown: str | None = None
        while True:
            self._changed.clear()
            text = self._latest
            if text == seen:
                await self._changed.wait()
                continue
            seen = text
            preview = in_progress_text(mood, text)
            if preview is None or preview == shown:
                continue  # nothing new to show (blank so far, or past the first message's length)
            self._request = asyncio.create_task(self._show(preview))
            if not await asyncio.shield(self._request):
                return  # give up on progress; the final reply is delivered all the same
            shown = preview
            await asyncio.sleep(self._edit_interval)

    async def _show(self, preview: str) -> bool:
        """Post or update the in-progress message; False when Discord refused."""
        try:
            if self.posted is None:
                posted = await call_discord(
                    "show a reply in progress", lambda: self._post(preview), attempts=1
                )
                self.posted = posted
                if self._on_posted is not None:
                    self._on_posted(posted)
                if self._typing is not None:
                    self._typing.refresh()
                await super().clear()  # the queue notice is stale once the reply shows
            else:
                posted = self.posted
                await call_discord(
                    "update a reply in progress",
                    lambda: posted.edit(content=preview, allowed_mentions=NO_MENTIONS),
                    attempts=1,
                )
        except PlatformError as error:
            logger.warning("Could not show a reply in progress (%s)", error)
            return False
        except Exception:  # progress is a courtesy: it must never cost the reply itself
            logger.exception("Unexpected error showing a reply in progress")
            return False
        return True

    async def _post(self, preview: str) -> discord.Message:
        kwargs: dict[str, object] = {"allowed_mentions": NO_MENTIONS}
        if self._as_reply:
            kwargs["reference"] = self._message.to_reference(fail_if_not_exists=False)
            kwargs["mention_author"] = False
        return await self._message.channel.send(preview, **kwargs)  # type: ignore[arg-type]
