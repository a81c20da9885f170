"""Everything the adapter sends to Telegram, with SDK errors translated into ``PlatformError``.

Flood control lives in the bot's rate limiter (PTB's ``AIORateLimiter``): it keeps per-chat and
overall rates below Telegram's limits, and on a 429 it pauses all requests for ``retry_after``
seconds and repeats the request, so a 429 delays a reply instead of dropping it.

Network failures (PTB's ``NetworkError``: connection refused or reset, timeouts, 5xx answers; but
not ``BadRequest``, which PTB also derives from it), which PTB does not repeat, become
``TransientError`` and are retried with the core's :func:`bot.delivery.with_backoff`,
``NETWORK_ATTEMPTS`` tries in all. That includes ``TimedOut`` on sends: a request that timed out
while Telegram was answering may have been delivered, so a retry can (rarely) show a message twice;
a duplicate is visible and harmless, a lost reply is silence. Retried edits are safe: a repeat that
finds the text already in place is answered "message is not modified", which counts as success.
Best-effort requests (the typing indicator, previews of a reply in progress) are not retried:
the next one follows within seconds anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from adapters.telegram.formatting import TEXT_LIMIT, caption_for, split_for_telegram
from bot.delivery import RefusedError, TransientError, with_backoff
from bot.delivery.timing import ATTEMPTS, BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS
from bot.errors import PlatformError
from bot.types import Action, Attachment

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Telegram's limit for callback data.
CALLBACK_DATA_LIMIT = 64
#: Tries in all for a request that fails with a network error (the core's backoff between them).
NETWORK_ATTEMPTS = ATTEMPTS
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


class TelegramForbiddenError(RefusedError):
    """Telegram refused with 403: the user blocked the bot, never started it, or the bot left the chat."""


class TelegramNetworkError(TransientError):
    """The request failed on the way (connection, timeout, 5xx); trying again may succeed."""


async def translate(request: Awaitable[T], what: str) -> T:
    """Await a Bot API request; any SDK error becomes a ``PlatformError`` naming ``what`` failed."""
    try:
        return await request
    except Forbidden as error:
        raise TelegramForbiddenError(f"Telegram refused to {what}: {error.message}") from error
    except RetryAfter as error:
        raise PlatformError(f"Telegram kept rate-limiting {what} after several retries") from error
    except BadRequest as error:
        raise PlatformError(f"Telegram failed to {what}: {error.message}") from error
    except NetworkError as error:
        # Named by class only: a transport error's text could quote the request URL (with the token).
        raise TelegramNetworkError(f"could not {what}: {_network_failure(error)}") from error
    except TelegramError as error:
        raise PlatformError(f"Telegram failed to {what}: {error.message}") from error


def _network_failure(error: NetworkError) -> str:
    """``TimedOut (ReadTimeout)``: the SDK's error class and the transport's, never their texts."""
    cause = error.__cause__
    name = type(error).__name__
    return f"{name} ({type(cause).__name__})" if cause is not None else name


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
    """Sends texts, files and chat actions with one bot; plain text only, link previews off.

    Requests that fail with a network error are retried (``attempts`` tries in all, waiting
    ``backoff`` seconds, then twice as long each time, at most ``BACKOFF_MAX_SECONDS``), unless a
    method is called with ``retry=False``.
    """

    def __init__(
        self, bot: Bot, *, attempts: int = NETWORK_ATTEMPTS, backoff: float = BACKOFF_FIRST_SECONDS
    ) -> None:
        self.bot = bot
        self._attempts = max(1, attempts)
        self._backoff = backoff

    async def _request(self, make: Callable[[], Awaitable[T]], what: str, *, retry: bool = True) -> T:
        """Run the request ``make()`` creates, again after a network error (with backoff)."""
        return await with_backoff(
            lambda: translate(make(), what),
            attempts=self._attempts if retry else 1,
            first_delay=self._backoff,
            max_delay=BACKOFF_MAX_SECONDS,
        )

    async def text(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        markup: InlineKeyboardMarkup | None = None,
        retry: bool = True,
    ) -> Message:
        """Send one plain-text message (``text`` must already fit one message) to ``chat_id``, in the
        forum topic ``thread_id`` if given."""
        reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
        try:
            return await self._send_text(chat_id, text, reply, markup, thread_id=thread_id, retry=retry)
        except PlatformError as error:
            if not _is_too_long(error):
                raise
        # Telegram counted the text longer than we did: send it in smaller pieces instead.
        logger.warning("Telegram found a message too long; sending it in smaller parts")
        parts = split_for_telegram(text, TEXT_LIMIT // 2)
        sent: Message | None = None
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            sent = await self._send_text(
                chat_id,
                part,
                reply if index == 0 else None,
                markup if last else None,
                thread_id=thread_id,
                retry=retry,
            )
        assert sent is not None
        return sent

    async def _send_text(
        self,
        chat_id: int,
        text: str,
        reply: ReplyParameters | None,
        markup: InlineKeyboardMarkup | None,
        *,
        thread_id: int | None,
        retry: bool,
    ) -> Message:
        return await self._request(
            lambda: self.bot.send_message(
                chat_id,
                text,
                message_thread_id=thread_id,
                reply_parameters=reply,
                reply_markup=markup,
                link_preview_options=_NO_PREVIEW,
            ),
            "send a message",
            retry=retry,
        )

    async def edit(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        *,
        markup: InlineKeyboardMarkup | None = None,
        retry: bool = True,
    ) -> None:
        """Replace a message's text; an edit to identical text is not an error."""
        await self._modify(
            lambda: self.bot.edit_message_text(
                text,
                chat_id=chat_id,
                message_id=message_id,
                reply_markup=markup,
                link_preview_options=_NO_PREVIEW,
            ),
            "edit a message",
            retry=retry,
        )

    async def remove_buttons(self, chat_id: int, message_id: int) -> None:
        """Take the inline keyboard off a message (so a choice cannot be made twice)."""
        await self._modify(
            lambda: self.bot.edit_message_reply_markup(
                chat_id=chat_id, message_id=message_id, reply_markup=None
            ),
            "remove buttons",
        )

    async def _modify(self, make: Callable[[], Awaitable[object]], what: str, *, retry: bool = True) -> None:
        """An edit; Telegram's "message is not modified" (a repeat that found it done) is success."""
        try:
            await self._request(make, what, retry=retry)
        except PlatformError as error:
            if not _is_not_modified(error):
                raise

    async def delete(self, chat_id: int, message_id: int) -> None:
        """Delete one of the bot's messages (best effort: a failure is only logged)."""
        try:
            await self._request(
                lambda: self.bot.delete_message(chat_id, message_id), "delete a message", retry=False
            )
        except PlatformError as error:
            logger.info("Could not delete a message: %s", error)

    async def attachment(
        self,
        chat_id: int,
        attachment: Attachment,
        *,
        caption: str | None = None,
        thread_id: int | None = None,
    ) -> Message:
        """A PNG or JPEG as a photo (falling back to a document if Telegram refuses it); anything
        else as a document with its file name."""
        caption = caption_for(caption) if caption else None
        if attachment.mime_type in ("image/png", "image/jpeg"):
            try:
                return await self._request(
                    lambda: self.bot.send_photo(
                        chat_id,
                        InputFile(attachment.content, filename=attachment.filename),
                        caption=caption,
                        message_thread_id=thread_id,
                    ),
                    "send a photo",
                )
            except (TelegramForbiddenError, TelegramNetworkError):
                raise
            except PlatformError:
                logger.warning("Telegram refused a photo; sending it as a document", exc_info=True)
        return await self._request(
            lambda: self.bot.send_document(
                chat_id,
                InputFile(attachment.content, filename=attachment.filename),
                caption=caption,
                message_thread_id=thread_id,
            ),
            "send a document",
        )

    async def answer_callback(self, query_id: str, text: str | None = None) -> None:
        """Acknowledge a button press (best effort: an expired query is only logged)."""
        try:
            await self._request(
                lambda: self.bot.answer_callback_query(query_id, text=text), "answer a button press"
            )
        except PlatformError:
            logger.warning("Could not answer a callback query", exc_info=True)

    async def typing(self, chat_id: int, *, thread_id: int | None = None) -> None:
        """Show "typing…" once (not retried: the indicator loop renews it every few seconds)."""
        await self._request(
            lambda: self.bot.send_chat_action(chat_id, ChatAction.TYPING, message_thread_id=thread_id),
            "show typing",
            retry=False,
        )


def _is_too_long(error: PlatformError) -> bool:
    cause = error.__cause__
    return isinstance(cause, BadRequest) and "too long" in cause.message.lower()


def _is_not_modified(error: PlatformError) -> bool:
    cause = error.__cause__
    return isinstance(cause, BadRequest) and "not modified" in cause.message.lower()
