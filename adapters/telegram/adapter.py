"""The Telegram adapter: python-telegram-bot (asyncio, long polling) in front of the engine.

Behaviour and decisions:

* **Private chats**: every text message is answered. A chat reply starts with a compact mood line
  (``🙂 positive 0.90``), then the reply text, split below Telegram's 4096-character limit at
  paragraph, line, sentence or word boundaries.
* **Groups and supergroups**: a message is handled only when it mentions the bot (``@botname``),
  replies to one of the bot's messages, or starts with a command not aimed at another bot
  (``/mood``, ``/mood@botname``). Everything else is ignored before the engine sees it, so it is
  neither answered nor stored. The bot's mention is removed from the text. Each person has their
  own conversation per group (chat id = the group, user id = the sender). Replies quote the message
  they answer; in forum groups every message of an answer (and "typing…") names the topic it was
  asked in, since Telegram puts a message without one in General. A reply about the user's own
  data (``Reply.private``: /mood, /export, /forget, ...) is sent to the user's private chat
  instead, with a short note in the group; if Telegram refuses (the user never started the bot)
  the group is told how to open the private chat.
* **Text is sent as plain text** (no ``parse_mode``): model output is shown exactly as written and
  can never cause "can't parse entities". Link previews are off.
* **Commands** are parsed by the core; the menu is registered with setMyCommands at start-up.
  Actions become inline buttons whose callback data is the action's command; pressing one is
  handled as that command from the presser, and the buttons are removed from the message.
* **Non-text messages** (stickers, photos, voice, files, ...) addressed to the bot get a short
  friendly note that only text is read; nothing is stored. Service messages are ignored.
* **Edited messages are ignored**: they are not requested from Telegram (``allowed_updates`` is
  ``message`` and ``callback_query``) and not handled if they arrive anyway. The original message
  was already answered; re-answering an edit would duplicate history and mood entries.
* **Allowlists** (TELEGRAM_ALLOWED_USER_IDS / TELEGRAM_ALLOWED_CHAT_IDS) are checked before
  anything else; strangers get no answer and nothing is stored. Messages from bots are ignored.
* **While the model works**: "typing…" is renewed every 4 s until the final text is delivered
  (one loop per chat and topic), and a message that waits behind others gets a note with its place
  in the queue (removed once the reply shows).
* **Progressive display is on by default** (``MOODMATE_STREAM_REPLIES``, default true), as the
  core's :mod:`bot.delivery` runs it for every platform: a reply still being written 1.5 s after
  its mood was read is shown while it is written, edited at most every 1.5 s (4 s in groups, where
  Telegram allows about 20 messages a minute, "typing…" included) and never to identical text
  (Telegram refuses that with 400 "message is not modified"), then finished in place. With
  streaming off, every reply is sent once, when finished. This adapter translates updates into
  ``IncomingMessage`` and implements the core's port (:mod:`adapters.telegram.port`).
* **Flood control**: PTB's ``AIORateLimiter`` keeps per-chat and overall rates, and on a 429
  waits ``retry_after`` and repeats the request (up to several times), so replies are delayed,
  not dropped.
* **Network errors are retried** (:mod:`adapters.telegram.outbox`, with the core's backoff helper):
  PTB's ``NetworkError`` (connection failures, timeouts, 5xx; not ``BadRequest``, which PTB derives
  from it), up to 4 tries with backoff 1 s, 2 s, 4 s (capped at 8 s), for sends, edits, files and
  button answers.
  ``TimedOut`` is retried on sends too: a send whose answer was lost may have been delivered, so a
  rare duplicate is accepted over a lost reply (which would be silence). Retried edits are safe
  ("not modified" counts as done). "typing…" is not retried (its loop renews it anyway). Retries
  are logged at WARNING with the errors' class names only, never message text or token.
* **Concurrency**: updates are processed concurrently (one user's slow reply does not hold up
  others); the engine's worker queue serialises the model. On stop, replies in progress get a
  grace period; whatever is still unanswered stays pending in storage and is answered after restart.
* **Webhook mode** (``TELEGRAM_WEBHOOK_URL``, ``TELEGRAM_WEBHOOK_LISTEN`` host:port,
  ``TELEGRAM_WEBHOOK_SECRET``): instead of polling, a small aiohttp server
  (:mod:`adapters.telegram.webhook`) listens on host:port, the webhook is set to the public URL with
  the secret, and every request without that secret is refused (403). An update is acknowledged
  once its message is stored, so a process that dies loses nothing and one user's messages are
  stored in order. Several processes behind a load balancer share the load; the database's claims
  keep each message answered once. Polling stays the default.
* **TELEGRAM_API_BASE_URL**: a self-hosted Bot API server's root (``http://127.0.0.1:8081``) or that
  root plus ``/bot``; see :func:`adapters.telegram.config.api_urls`.
* httpx logs every request URL, which contains the token, at INFO; its logger is raised to
  WARNING unless it was configured explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from telegram import BotCommand, Message, Update, User
from telegram.constants import ChatType
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from adapters.telegram.addressing import BotIdentity, is_addressed, strip_bot_mention, topic_of
from adapters.telegram.config import Allowlist, api_urls, webhook_from_settings
from adapters.telegram.outbox import Outbox
from adapters.telegram.port import (
    GROUP_EDIT_INTERVAL_SECONDS,
    TYPING_INTERVAL_SECONDS,
    TelegramPort,
    place_for,
)
from adapters.telegram.webhook import WebhookServer
from bot.commands import COMMANDS
from bot.delivery import Delivery, PortLimits, PrivateNotes
from bot.delivery.timing import BACKOFF_FIRST_SECONDS, EDIT_INTERVAL_SECONDS, STREAM_DELAY_SECONDS
from bot.engine import Engine
from bot.errors import ConfigurationError, MoodmateError, PlatformError
from bot.settings import Settings
from bot.types import IncomingMessage, Platform, Reply

logger = logging.getLogger(__name__)

#: How many times a request hit by a 429 is repeated (each after Telegram's retry_after).
FLOOD_RETRIES = 6
POLL_TIMEOUT_SECONDS = 25
STOP_GRACE_SECONDS = 10.0
ALLOWED_UPDATES = (Update.MESSAGE, Update.CALLBACK_QUERY)

NON_TEXT_REPLY = "I can only read text messages for now. Tell me in words how you're doing?"
EMPTY_MENTION_REPLY = "Yes? Write your message after mentioning me, e.g. {mention} how was your day?"
PRIVATE_SENT_NOTE = "I've sent that to you in a private chat."
TOKEN_REVOKED = (
    "Telegram stopped accepting TELEGRAM_TOKEN while polling (was it revoked or changed with "
    "@BotFather?); put the current token in TELEGRAM_TOKEN."
)
PRIVATE_BLOCKED_NOTE = (
    "That answer is about your own data, so I only send it privately, but I can't message you yet. "
    "Open a chat with {mention}, press Start, then ask again."
)


class TelegramAdapter:
    """Connects the engine to Telegram. ``start()`` returns once polling runs; ``stop()`` ends it.

    Progressive display follows ``settings.stream_replies``; ``stream_delay=None`` also turns it
    off. The other options exist so tests can run the adapter quickly.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        poll_timeout: int = POLL_TIMEOUT_SECONDS,
        stream_delay: float | None = STREAM_DELAY_SECONDS,
        edit_interval: float = EDIT_INTERVAL_SECONDS,
        group_edit_interval: float = GROUP_EDIT_INTERVAL_SECONDS,
        typing_interval: float = TYPING_INTERVAL_SECONDS,
        network_backoff: float = BACKOFF_FIRST_SECONDS,
        stop_grace: float = STOP_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._allowlist = Allowlist.from_settings(settings)
        self._poll_timeout = poll_timeout
        self._stream_delay = stream_delay if settings.stream_replies else None
        self._edit_interval = edit_interval
        self._group_edit_interval = max(edit_interval, group_edit_interval)
        self._typing_interval = typing_interval
        self._network_backoff = network_backoff
        self._stop_grace = stop_grace
        self._application: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._outbox: Outbox | None = None
        self._delivery = Delivery(engine, cleanup_timeout=stop_grace)
        self._me: BotIdentity | None = None
        self._handling: set[asyncio.Task[Any]] = set()
        self._webhook: WebhookServer | None = None
        self._lost = asyncio.Event()  # set by the getUpdates request when the token is refused

    @property
    def identity(self) -> BotIdentity:
        """The bot's id and username (known once started)."""
        if self._me is None:
            raise PlatformError("the Telegram adapter is not running")
        return self._me

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the token (getMe), register the command menu, start long polling."""
        if self._application is not None:
            raise RuntimeError("the Telegram adapter is already running")
        token = self.settings.telegram_token
        if not token:
            raise ConfigurationError("TELEGRAM_TOKEN is not set; get a token from @BotFather.")
        urls = api_urls(self.settings.telegram_api_base_url)
        webhook = webhook_from_settings(self.settings)
        _keep_token_out_of_logs()
        self._lost.clear()
        builder = (
            ApplicationBuilder()
            .token(token)
            .base_url(urls.base_url)
            .base_file_url(urls.base_file_url)
            .get_updates_request(PollingRequest(self._lost.set))
            .rate_limiter(AIORateLimiter(max_retries=FLOOD_RETRIES))
            .concurrent_updates(True)
            .job_queue(None)
        )
        if webhook is not None:
            builder = builder.updater(None)  # updates come in through the webhook server
        application = builder.build()
        application.add_handler(MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT, self._on_text))
        application.add_handler(
            MessageHandler(
                filters.UpdateType.MESSAGE & ~filters.TEXT & ~filters.StatusUpdate.ALL, self._on_other
            )
        )
        application.add_handler(CallbackQueryHandler(self._on_button))
        application.add_error_handler(self._on_error)

        try:
            await application.initialize()
        except InvalidToken:
            await _quietly(application.bot.shutdown())
            hint = (
                " (or TELEGRAM_API_BASE_URL does not point at a Bot API server)"
                if self.settings.telegram_api_base_url
                else ""
            )
            raise ConfigurationError(
                f"Telegram rejected TELEGRAM_TOKEN{hint}; copy the token from @BotFather."
            ) from None
        except TelegramError as error:
            await _quietly(application.bot.shutdown())
            raise PlatformError(f"Could not reach the Telegram Bot API: {error.message}") from error

        me = application.bot.bot
        self._me = BotIdentity(id=me.id, username=me.username or "")
        self._outbox = Outbox(application.bot, backoff=self._network_backoff)
        try:
            await application.bot.set_my_commands(
                [BotCommand(spec.name, spec.menu_line) for spec in COMMANDS]
            )
        except TelegramError as error:
            logger.warning("Could not register the Telegram command menu: %s", error.message)
        try:
            await application.start()
            if webhook is None:
                assert application.updater is not None
                await application.updater.start_polling(
                    timeout=int(self._poll_timeout),  # the Bot API wants whole seconds
                    allowed_updates=list(ALLOWED_UPDATES),
                    drop_pending_updates=False,
                    error_callback=_log_polling_error,
                )
            else:
                self._webhook = WebhookServer(application, webhook)
                await self._webhook.start()
                await application.bot.set_webhook(
                    url=webhook.url,
                    secret_token=webhook.secret,
                    allowed_updates=list(ALLOWED_UPDATES),
                    drop_pending_updates=False,
                )
        except TelegramError as error:
            await _quietly(self._shutdown(application))
            raise PlatformError(f"Could not start receiving Telegram updates: {error.message}") from error
        except OSError as error:
            await _quietly(self._shutdown(application))
            assert webhook is not None
            raise ConfigurationError(
                f"Could not listen for Telegram webhooks on {webhook.host}:{webhook.port} "
                f"({error.strerror or type(error).__name__}); set TELEGRAM_WEBHOOK_LISTEN to a free address."
            ) from None
        self._application = application
        if webhook is None:
            logger.info("Telegram: polling as @%s", self._me.username)
        else:
            logger.info(
                "Telegram: receiving webhooks as @%s on %s:%d", self._me.username, webhook.host, webhook.port
            )

    async def wait_lost(self) -> MoodmateError:
        """Return once polling has stopped for good: PTB gives up only when the token is refused."""
        await self._lost.wait()
        return ConfigurationError(TOKEN_REVOKED)

    async def stop(self) -> None:
        """Stop polling, let replies in progress finish (within a grace period), shut down."""
        application, self._application = self._application, None
        if application is None:
            return
        await self._shutdown(application)
        logger.info("Telegram: stopped")

    async def _shutdown(self, application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        try:
            webhook, self._webhook = self._webhook, None
            if webhook is not None:
                await webhook.stop()
            if application.updater is not None and application.updater.running:
                try:
                    await application.updater.stop()
                except TelegramError as error:  # how polling ended (a refused token): already reported
                    logger.debug("Telegram polling had ended with %s", type(error).__name__)
            await self._drain()
            if application.running:
                await application.stop()
            await self._delivery.stop()
        finally:
            await application.shutdown()

    async def _drain(self) -> None:
        pending = {task for task in self._handling if task is not asyncio.current_task()}
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=self._stop_grace)
        if still_running:
            logger.info(
                "Telegram: %d replies still in progress at shutdown; they stay pending for the next start",
                len(still_running),
            )
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)

    # ------------------------------------------------------------------ incoming

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.text is None or not self._accepts(message):
            return
        with self._tracked():
            me = self.identity
            text = strip_bot_mention(message.text, message.entities, me)
            private = message.chat.type == ChatType.PRIVATE
            reply_to = None if private else message.message_id
            thread_id = topic_of(message)
            if not text.strip() and not private:
                await self._send_safely(
                    message.chat.id,
                    EMPTY_MENTION_REPLY.format(mention=me.mention),
                    reply_to=reply_to,
                    thread_id=thread_id,
                )
                return
            assert message.from_user is not None
            incoming = _incoming(
                message.chat.id, message.from_user, text, private=private, message_id=message.message_id
            )
            receipt = self._webhook.receipt(update.update_id) if self._webhook is not None else None
            await self._answer(incoming, reply_to=reply_to, thread_id=thread_id, receipt=receipt)

    async def _on_other(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or not self._accepts(message):
            return
        with self._tracked():
            private = message.chat.type == ChatType.PRIVATE
            await self._send_safely(
                message.chat.id,
                NON_TEXT_REPLY,
                reply_to=None if private else message.message_id,
                thread_id=topic_of(message),
            )

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or self._outbox is None:
            return
        user = query.from_user
        message = query.message
        chat = message.chat if message is not None else None
        chat_id = chat.id if chat is not None else user.id
        with self._tracked():
            if user.is_bot or not self._allowlist.allows(user.id, chat_id):
                logger.info("Telegram: ignoring a button press from outside the allowlist")
                await self._outbox.answer_callback(query.id)
                return
            await self._outbox.answer_callback(query.id)
            data = query.data or ""
            if not data.startswith("/"):
                return
            if message is not None:
                try:
                    await self._outbox.remove_buttons(chat_id, message.message_id)
                except PlatformError as error:
                    logger.info("Could not remove buttons after a press: %s", error)
            incoming = _incoming(chat_id, user, data, private=chat is None or chat.type == ChatType.PRIVATE)
            await self._answer(incoming, reply_to=None, thread_id=topic_of(message))

    def _accepts(self, message: Message) -> bool:
        """From a person on the allowlist, and (in groups) addressed to the bot."""
        user = message.from_user
        if user is None or user.is_bot or self._me is None or not is_addressed(message, self._me):
            return False
        if not self._allowlist.allows(user.id, message.chat.id):
            logger.info("Telegram: ignoring a message from outside the allowlist")
            return False
        return True

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        logger.error("Telegram: unhandled error while processing an update", exc_info=context.error)

    # ------------------------------------------------------------------ answering

    def _port(
        self, incoming: IncomingMessage, *, reply_to: int | None, thread_id: int | None
    ) -> TelegramPort:
        """The port for the chat ``incoming`` came from, quoting ``reply_to``, in topic ``thread_id``."""
        if self._outbox is None:
            raise PlatformError("the Telegram adapter is not running")
        edit_interval = self._edit_interval if incoming.chat_is_private else self._group_edit_interval
        limits = PortLimits(self._typing_interval, edit_interval, self._stream_delay)
        notes = PrivateNotes(PRIVATE_SENT_NOTE, PRIVATE_BLOCKED_NOTE.format(mention=self.identity.mention))
        chat_id = int(incoming.chat_id)
        place = place_for(chat_id, thread_id, private=incoming.chat_is_private, limits=limits, notes=notes)
        return TelegramPort(self._outbox, place, (chat_id, int(incoming.user_id)), reply_to=reply_to)

    async def _answer(
        self,
        incoming: IncomingMessage,
        *,
        reply_to: int | None,
        thread_id: int | None,
        receipt: asyncio.Future[None] | None = None,
    ) -> None:
        """Answer ``incoming`` in its chat (replying to ``reply_to``, in forum topic ``thread_id``);
        ``receipt`` (webhook mode) is resolved once the engine has stored the message."""
        port = self._port(incoming, reply_to=reply_to, thread_id=thread_id)

        def stored() -> None:
            if receipt is not None and not receipt.done():
                receipt.set_result(None)

        await self._delivery.answer(incoming, port, on_stored=stored)

    async def admits(self, message: IncomingMessage) -> bool:
        """Whether the allowlists admit ``message``'s sender now (checked again at recovery)."""
        try:
            return self._allowlist.allows(int(message.user_id), int(message.chat_id))
        except ValueError:
            return False

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        """Send ``reply`` to where ``message`` came from (used for messages answered after a restart)."""
        reply_to = None
        if not message.chat_is_private and message.message_id and message.message_id.isdigit():
            reply_to = int(message.message_id)
        port = self._port(message, reply_to=reply_to, thread_id=None)
        await self._delivery.deliver(port, reply)

    async def _send_safely(
        self, chat_id: int, text: str, *, reply_to: int | None, thread_id: int | None = None
    ) -> None:
        """Send a short notice; a failure is logged, never raised."""
        if self._outbox is None:
            return
        try:
            await self._outbox.text(chat_id, text, reply_to=reply_to, thread_id=thread_id)
        except PlatformError as error:
            logger.warning("Telegram: could not send a notice: %s", error)

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Remember the running handler task, so stop() can wait for it or cancel it."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._handling.add(task)
        try:
            yield
        finally:
            self._handling.discard(task)


class PollingRequest(HTTPXRequest):
    """PTB's request for getUpdates (one connection, as PTB builds it), calling ``on_refused`` when the
    Bot API refuses the token (401, or 404 for a token it does not know): PTB raises ``InvalidToken``
    for those and ends its polling loop for good, so the adapter would otherwise go silently deaf."""

    def __init__(self, on_refused: Callable[[], object]) -> None:
        super().__init__(connection_pool_size=1)
        self._on_refused = on_refused

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        status, payload = await super().do_request(*args, **kwargs)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.NOT_FOUND):
            self._on_refused()
        return status, payload


def _incoming(
    chat_id: int, user: User, text: str, *, private: bool, message_id: int | None = None
) -> IncomingMessage:
    """A message (or a button press) from ``user`` in chat ``chat_id``, as the engine's event."""
    message = None if message_id is None else str(message_id)
    platform = Platform.TELEGRAM
    return IncomingMessage(
        platform,
        str(chat_id),
        str(user.id),
        user.full_name,
        text,
        chat_is_private=private,
        message_id=message,
    )


def _log_polling_error(error: TelegramError) -> None:
    logger.warning("Telegram: polling failed (%s); retrying", error.message)


def _keep_token_out_of_logs() -> None:
    httpx_logger = logging.getLogger("httpx")
    if httpx_logger.level == logging.NOTSET:
        httpx_logger.setLevel(logging.WARNING)


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        logger.debug("Ignored an error while cleaning up", exc_info=True)
