"""Everything the adapter sends to Telegram, with SDK errors translated into ``PlatformError``.

Flood control lives in the bot's rate limiter (PTB's ``AIORateLimiter``): it keeps per-chat and
overall rates below Telegram's limits, and on a 429 it pauses all requests for ``retry_after``
seconds and repeats the request, so a 429 delays a reply instead of dropping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from adapters.telegram.formatting import TEXT_LIMIT, caption_for, split_for_telegram
from bot.errors import PlatformError
from bot.types import Action, Attachment

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Telegram clears "typing…" after about five seconds, so it is renewed a little sooner.
TYPING_INTERVAL_SECONDS = 4.0
#: Telegram's limit for callback data.
CALLBACK_DATA_LIMIT = 64
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


class TelegramForbiddenError(PlatformError):
    """Telegram refused with 403: the user blocked the bot, never started it, or the bot left the chat."""


async def translate(request: Awaitable[T], what: str) -> T:
    """Await a Bot API request; any SDK error becomes a ``PlatformError`` naming ``what`` failed."""
    try:
        return await request
    except Forbidden as error:
        raise TelegramForbiddenError(f"Telegram refused to {what}: {error.message}") from error
    except RetryAfter as error:
        raise PlatformError(f"Telegram kept rate-limiting {what} after several retries") from error
    except TelegramError as error:
        raise PlatformError(f"Telegram failed to {what}: {error.message}") from error


def keyboard_for(actions: tuple[Action, ...]) -> InlineKeyboardMarkup | None:
    """Actions as one row of inline buttons whose callback data is the action's command."""
    buttons = []
    for action in actions:
        if len(action.command.encode()) > CALLBACK_DATA_LIMIT:
            logger.warning("Skipping a button whose command is longer than Telegram allows")
            continue
        buttons.append(InlineKeyboardButton(action.label, callback_data=action.command))
    return InlineKeyboardMarkup([buttons]) if buttons else None


class Outbox:
    """Sends texts, files and chat actions with one bot; plain text only, link previews off."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def text(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        markup: InlineKeyboardMarkup | None = None,
    ) -> Message:
        """Send one plain-text message (``text`` must already fit one message)."""
        reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
        try:
            return await translate(
                self.bot.send_message(
                    chat_id,
                    text,
                    reply_parameters=reply,
                    reply_markup=markup,
                    link_preview_options=_NO_PREVIEW,
                ),
                "send a message",
            )
        except PlatformError as error:
            if not _is_too_long(error):
                raise
        # Telegram counted the text longer than we did: send it in smaller pieces instead.
        logger.warning("Telegram found a message too long; sending it in smaller parts")
        parts = split_for_telegram(text, TEXT_LIMIT // 2)
        sent: Message | None = None
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            sent = await translate(
                self.bot.send_message(
                    chat_id,
                    part,
                    reply_parameters=reply if index == 0 else None,
                    reply_markup=markup if last else None,
                    link_preview_options=_NO_PREVIEW,
                ),
                "send a message",
            )
        assert sent is not None
        return sent

    async def edit(
        self, chat_id: int, message_id: int, text: str, *, markup: InlineKeyboardMarkup | None = None
    ) -> None:
        """Replace a message's text; an edit to identical text is not an error."""
        try:
            await translate(
                self.bot.edit_message_text(
                    text,
                    chat_id=chat_id,
                    message_id=message_id,
                    reply_markup=markup,
                    link_preview_options=_NO_PREVIEW,
                ),
                "edit a message",
            )
        except PlatformError as error:
            if not _is_not_modified(error):
                raise

    async def remove_buttons(self, chat_id: int, message_id: int) -> None:
        """Take the inline keyboard off a message (so a choice cannot be made twice)."""
        try:
            await translate(
                self.bot.edit_message_reply_markup(chat_id=chat_id, message_id=message_id, reply_markup=None),
                "remove buttons",
            )
        except PlatformError as error:
            if not _is_not_modified(error):
                raise

    async def attachment(
        self, chat_id: int, attachment: Attachment, *, caption: str | None = None
    ) -> Message:
        """A PNG or JPEG as a photo (falling back to a document if Telegram refuses it); anything
        else as a document with its file name."""
        caption = caption_for(caption) if caption else None
        if attachment.mime_type in ("image/png", "image/jpeg"):
            try:
                return await translate(
                    self.bot.send_photo(
                        chat_id,
                        InputFile(attachment.content, filename=attachment.filename),
                        caption=caption,
                    ),
                    "send a photo",
                )
            except TelegramForbiddenError:
                raise
            except PlatformError:
                logger.warning("Telegram refused a photo; sending it as a document", exc_info=True)
        return await translate(
            self.bot.send_document(
                chat_id,
                InputFile(attachment.content, filename=attachment.filename),
                caption=caption,
            ),
            "send a document",
        )

    async def answer_callback(self, query_id: str, text: str | None = None) -> None:
        """Acknowledge a button press (best effort: an expired query is only logged)."""
        try:
            await translate(self.bot.answer_callback_query(query_id, text=text), "answer a button press")
        except PlatformError:
            logger.warning("Could not answer a callback query", exc_info=True)

    async def typing(self, chat_id: int) -> None:
        await translate(self.bot.send_chat_action(chat_id, ChatAction.TYPING), "show typing")


class TypingIndicators:
    """One "typing…" loop per chat, shared by all replies being prepared there.

    Every loop is a task kept in ``self.tasks``; it ends when the last reply in its chat is sent.
    """

    def __init__(self, outbox: Outbox, interval: float = TYPING_INTERVAL_SECONDS) -> None:
        self._outbox = outbox
        self._interval = interval
        self._users: dict[int, int] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    @contextlib.asynccontextmanager
    async def showing(self, chat_id: int) -> AsyncIterator[None]:
        """Keep "typing…" visible in ``chat_id`` while the block runs."""
        self._users[chat_id] = self._users.get(chat_id, 0) + 1
        if chat_id not in self.tasks:
            self.tasks[chat_id] = asyncio.create_task(self._loop(chat_id), name=f"telegram-typing-{chat_id}")
        try:
            yield
        finally:
            self._users[chat_id] -= 1
            if self._users[chat_id] <= 0:
                del self._users[chat_id]
                task = self.tasks.pop(chat_id, None)
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _loop(self, chat_id: int) -> None:
        while True:
            try:
                await self._outbox.typing(chat_id)
            except PlatformError as error:
                logger.debug("Could not show typing: %s", error)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        self._users.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _is_too_long(error: PlatformError) -> bool:
    cause = error.__cause__
    return isinstance(cause, BadRequest) and "too long" in cause.message.lower()


def _is_not_modified(error: PlatformError) -> bool:
    cause = error.__cause__
    return isinstance(cause, BadRequest) and "not modified" in cause.message.lower()
