"""The reply lifecycle, the same on every platform, driving a :class:`~bot.delivery.port.ReplyPort`.

For one message: "typing…" until the final text is out; a queue notice when the message waits
(removed once the reply shows); with streaming, the reply shown while it is written (after
``stream_delay``, at most one change per ``edit_interval``, never to the same text, best effort:
after one failed request no more previews); then every reply: the first one edits the preview into
its first part, further parts follow as new messages (buttons and files with the last), so what
stays in the chat is exactly what a reply sent at once shows; if that edit fails, the reply is
sent anew and the preview deleted. An answer about a person's own data asked for in a group goes
to their private chat, with a note in the group. Each reply is confirmed to the engine
(``delivered``, or ``not_delivered`` for what was left unsent). A refusal (``RefusedError``) is
not followed by an apology into the chat that refused; any other failure is. Stopped mid-reply,
the preview is deleted: the message stays pending and is answered in full after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from bot.delivery.indicator import TypingLoops
from bot.delivery.port import Outgoing, Posted, RefusedError, ReplyPort
from bot.delivery.timing import CLEANUP_SECONDS, IN_FLIGHT_WAIT_SECONDS
from bot.engine import ReplySink
from bot.errors import MoodmateError, PlatformError
from bot.types import IncomingMessage, Mood, Reply, ReplyKind

logger = logging.getLogger(__name__)


def queue_notice(position: int) -> str:
    """What a person whose message waits behind ``position`` others is told."""
    ahead = "1 message" if position == 1 else f"{position} messages"
    return f"⏳ I'm answering {ahead} ahead of yours; I'll be with you as soon as I can."


class Answering(Protocol):
    """What the lifecycle needs of the engine."""

    async def handle(self, message: IncomingMessage, sink: ReplySink | None = None) -> list[Reply]: ...

    async def delivered(self, reply: Reply) -> None: ...

    async def not_delivered(self, reply: Reply) -> None: ...


class Delivery:
    """One platform's replies: :meth:`answer` runs the whole lifecycle of a message."""

    def __init__(self, engine: Answering, *, cleanup_timeout: float = CLEANUP_SECONDS) -> None:
        self.engine = engine
        self.cleanup_timeout = cleanup_timeout
        self.typing = TypingLoops()

    async def answer(
        self,
        incoming: IncomingMessage,
        port: ReplyPort,
        *,
        on_stored: Callable[[], object] | None = None,
    ) -> None:
        """Answer ``incoming`` at ``port``; failures are logged and answered with an apology where
        the chat did not refuse us. ``on_stored`` runs once the engine has stored the message."""
        progress = (
            _Streaming(port, self.typing, on_stored)
            if port.place.limits.stream_delay is not None
            else _Progress(port, self.typing, on_stored)
        )
        unsent: list[Reply] = []
        shown = _Shown()
        try:
            async with self.typing.showing(port):  # "typing…" lasts until the final text is out
                try:
                    replies = await self.engine.handle(incoming, progress)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(progress.close(), self.cleanup_timeout)
                    raise
                except Exception:
                    logger.exception("The engine failed on a message")
                    replies = [Reply(MoodmateError.user_message, kind=ReplyKind.ERROR)]
                unsent = list(replies)
                shown.posted = await progress.finish()
                for reply in replies:
                    await self._send(port, reply, shown)
                    unsent.remove(reply)
                    await self.engine.delivered(reply)  # the platform accepted it
        except RefusedError as error:
            logger.warning("The platform would not take a reply here: %s", error)
            await self._not_delivered(unsent)
        except PlatformError as error:
            logger.warning("Could not deliver a reply: %s", error)
            await self._not_delivered(unsent)
            await self._apologise(port)
        except Exception:
            logger.exception("Unexpected error while delivering a reply")
            await self._not_delivered(unsent)
            await self._apologise(port)
        finally:
            await _delete(port, shown.take())  # shown while written, but no reply took its place
            await progress.close()

    async def deliver(self, port: ReplyPort, reply: Reply, *, replacing: Posted | None = None) -> None:
        """Send one finished ``reply`` to ``port`` (answers recovered after a restart, answers to
        interactions), in place of ``replacing`` if given; raises ``PlatformError`` when the
        platform did not take it."""
        shown = _Shown()
        shown.posted = replacing
        await self._send(port, reply, shown)

    async def stop(self) -> None:
        """End every "typing…" loop (at shutdown)."""
        await self.typing.stop()

    async def _send(self, port: ReplyPort, reply: Reply, shown: _Shown) -> None:
        """Send ``reply``; the first reply posted in the chat takes the place of ``shown``."""
        if reply.private and not port.place.private:
            await self._send_privately(port, reply)
            return
        texts = port.render(reply)
        preview = shown.take()
        if preview is not None:
            if texts and await self._finish_in_place(port, preview, texts, reply):
                return
            await _delete(port, preview)  # the reply is sent anew: the unfinished text goes
        await _post_all(port, texts, reply)

    @staticmethod
    async def _finish_in_place(port: ReplyPort, preview: Posted, texts: list[str], reply: Reply) -> bool:
        """Edit ``preview`` into the first part, post the rest; False if the edit failed."""
        first = _part(texts, 0, reply)
        if first.text != preview.text or first.actions or first.attachments:
            try:
                await port.edit(preview, first)
            except RefusedError:
                raise
            except PlatformError as error:
                logger.warning("Could not finish a reply shown in progress (%s); sending it anew", error)
                return False
        await _post_all(port, texts[1:], reply, starts_reply=False)
        return True

    @staticmethod
    async def _send_privately(port: ReplyPort, reply: Reply) -> None:
        """An answer about someone's own data, asked for in a group: to their private chat."""
        try:
            private = await port.open_private()
            await _post_all(private, private.render(reply), reply)
            note = port.place.notes.sent
        except RefusedError as error:
            logger.info("Could not send a private answer privately (%s); telling the group", error)
            note = port.place.notes.refused
        await port.post(Outgoing(note), quote=True)

    @staticmethod
    async def _apologise(port: ReplyPort) -> None:
        try:
            await port.post(Outgoing(MoodmateError.user_message), quote=True)
        except PlatformError as error:
            logger.warning("Could not apologise either: %s", error)

    async def _not_delivered(self, replies: list[Reply]) -> None:
        for reply in replies:
            await self.engine.not_delivered(reply)


class _Shown:
    """The preview of the reply, until a reply takes its place (or it is deleted)."""

    def __init__(self) -> None:
        self.posted: Posted | None = None

    def take(self) -> Posted | None:
        posted, self.posted = self.posted, None
        return posted


async def _post_all(port: ReplyPort, texts: list[str], reply: Reply, *, starts_reply: bool = True) -> None:
    """Post ``texts`` in order; the first quotes the message answered (when it starts the reply),
    the last carries the reply's buttons and files (alone, when there is no text)."""
    if not texts and not (starts_reply and (reply.attachments or reply.actions)):
        return
    for index in range(max(1, len(texts))):
        await port.post(_part(texts, index, reply), quote=starts_reply and index == 0)


def _part(texts: list[str], index: int, reply: Reply) -> Outgoing:
    """Message ``index`` of a reply split into ``texts``: the last one carries buttons and files."""
    if index < len(texts) - 1:
        return Outgoing(texts[index])
    return Outgoing(texts[index] if texts else None, reply.actions, reply.attachments)


async def _delete(port: ReplyPort, posted: Posted | None) -> None:
    """Delete ``posted`` (best effort: a failure is only logged)."""
    if posted is None:
        return
    try:
        await port.delete(posted)
    except PlatformError as error:
        logger.info("Could not delete a message: %s", error)


class _Progress(ReplySink):
    """What a message shows while it waits: the queue notice (once), removed when done."""

    def __init__(self, port: ReplyPort, typing: TypingLoops, on_stored: Callable[[], object] | None) -> None:
        self._port = port
        self._typing = typing
        self._on_stored = on_stored
        self._lock = asyncio.Lock()
        self._closed = False
        self._notice_told = False
        self._notice: Posted | None = None

    async def stored(self) -> None:
        if self._on_stored is not None:
            self._on_stored()

    async def queued(self, position: int) -> None:
        if self._notice_told or position < 1:
            return
        self._notice_told = True
        async with self._lock:
            if self._closed:
                return
            try:
                notice = Outgoing(queue_notice(position))
                self._notice = await self._port.post(notice, quote=True, retry=False)
            except PlatformError as error:
                logger.warning("Could not send a queue notice: %s", error)

    async def finish(self) -> Posted | None:
        """No more progress is shown; the message showing the reply in progress, if any."""
        self._closed = True
        return None

    async def close(self) -> None:
        """Done: remove the queue notice (waiting for one still being sent) and any preview the
        reply did not take the place of."""
        await self.finish()
        async with self._lock:
            notice, self._notice = self._notice, None
        await _delete(self._port, notice)


class _Streaming(_Progress):
    """Also shows the reply while it is written; a background task talks to the platform at its
    own pace, so the engine is never held up."""

    def __init__(self, port: ReplyPort, typing: TypingLoops, on_stored: Callable[[], object] | None) -> None:
        super().__init__(port, typing, on_stored)
        self._latest = ""
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._request: asyncio.Task[bool] | None = None
        self._preview: Posted | None = None
        self._taken = False

    async def mood(self, mood: Mood) -> None:
        if self._closed or self._runner is not None:
            return
        self._runner = asyncio.create_task(self._run(mood), name="reply-preview")

    async def partial(self, text: str) -> None:
        if self._closed:
            return
        self._latest = text
        self._changed.set()

    async def finish(self) -> Posted | None:
        """Stop the previews; the preview (to be edited into the reply), handed over once."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        elif runner is not None and not runner.cancelled() and runner.exception() is not None:
            logger.error("Showing a reply in progress failed", exc_info=runner.exception())
        request, self._request = self._request, None
        if request is not None and not request.done():
            try:  # let a post already on its way land, so that it is edited rather than left behind
                await asyncio.wait_for(request, IN_FLIGHT_WAIT_SECONDS)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("A preview request got no answer in time; not waiting longer")
        if self._taken:
            return None
        self._taken = True
        return self._preview

    async def close(self) -> None:
        untaken = await self.finish()
        await _delete(self._port, untaken)
        await super().close()

    async def _run(self, mood: Mood) -> None:
        delay = self._port.place.limits.stream_delay
        await asyncio.sleep(delay or 0.0)
        seen: str | None = None
        while True:
            self._changed.clear()
            text = self._latest
            if text == seen:
                await self._changed.wait()
                continue
            seen = text
            preview = self._port.preview(mood, text)
            shown = self._preview.text if self._preview is not None else None
            if preview is None or preview == shown:
                continue  # nothing new to show (blank so far, or past the first message)
            self._request = asyncio.create_task(self._show(preview))
            if not await asyncio.shield(self._request):
                return  # no more previews; the reply is delivered all the same
            await asyncio.sleep(self._port.place.limits.edit_interval)

    async def _show(self, preview: str) -> bool:
        """Post or update the preview; False when the platform refused."""
        try:
            if self._preview is None:
                self._preview = await self._port.post(Outgoing(preview), quote=True, retry=False)
                self._typing.refresh(self._port.place.key)  # posting hides "typing…"
                async with self._lock:  # the queue notice is stale once the reply shows
                    notice, self._notice = self._notice, None
                await _delete(self._port, notice)
            else:
                self._preview = await self._port.edit(self._preview, Outgoing(preview), retry=False)
        except PlatformError as error:
            logger.warning("Could not show a reply in progress; it will arrive when done: %s", error)
            return False
        except Exception:  # a courtesy: it must never cost the reply itself
            logger.exception("Unexpected error showing a reply in progress")
            return False
        return True
