"""The engine: one path from an incoming message to a reply, for every platform.

Per message: store it (pending) before any inference, read its mood with a history-free prompt,
log the mood, write a reply from this user's own history in this chat, store the reply and mark
the message answered. Every failure ends in a kind reply and a logged exception, never silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.commands import CommandContext, parse_command
from bot.errors import MoodmateError
from bot.inference import InferenceWorker, WorkerStoppedError
from bot.model.base import ChatTurn
from bot.prompts import clean_partial, clean_reply, is_chinese, reply_turns, system_prompt_for
from bot.safety.guard import SafetyGuard
from bot.settings import Settings
from bot.text import is_blank, sanitize, truncate
from bot.types import IncomingMessage, Mood, Platform, Reply, ReplyKind
from storage import ChatRecord, MessageRecord, MessageStatus, PendingMessage, Repository, UserRecord

logger = logging.getLogger(__name__)

PARTIAL_INTERVAL_SECONDS = 1.0
PROGRESS_DRAIN_SECONDS = 5.0
HISTORY_ROWS = 40
#: The longest a crisis reply waits for its message's mood read (logged as usual when it comes).
CRISIS_MOOD_WAIT_SECONDS = 10.0

BLANK_TEXT_REPLY = "I only read text, and that message looked empty. Write me a few words?"
TRUNCATED_NOTE_EN = "(Your message was long, so I read only its first {chars} characters.)"
TRUNCATED_NOTE_ZH = "（你的消息很长，我只读了前 {chars} 个字符。）"
BUSY_REPLY = "I'm still working on your earlier messages. Give me a moment before sending more, please."
RESTARTING_REPLY = "I'm restarting right now; I'll answer this message as soon as I'm back."
APOLOGY_REPLY = (
    "Sorry, I was offline for a while and missed your message. I'm back now, if you'd like to tell me again."
)


class ReplySink:
    """Progress callbacks an adapter may implement while a message is answered (no-ops here)."""

    async def queued(self, position: int) -> None:
        """The message arrived while ``position`` model calls are ahead of it (told once, on arrival)."""

    async def mood(self, mood: Mood) -> None:
        """The message's mood, known before the reply is written (so a progressive display can show it)."""

    async def partial(self, text: str) -> None:
        """The reply text generated so far (at most about once a second), always after ``mood``."""


class _ProgressRelay:
    """Runs one message's progress callbacks in order, off the answering path, and can be drained."""

    def __init__(self, sink: ReplySink) -> None:
        self.sink = sink
        self.wants_mood = type(sink).mood is not ReplySink.mood
        self.wants_partial = type(sink).partial is not ReplySink.partial
        self._last: asyncio.Task[None] | None = None

    def send(self, callback: Awaitable[None]) -> None:
        previous = self._last

        async def run() -> None:
            if previous is not None:
                await previous
            try:
                await callback
            except Exception:
                logger.exception("A progress callback failed")

        self._last = asyncio.create_task(run())

    async def drain(self, timeout: float = PROGRESS_DRAIN_SECONDS) -> None:
        """Wait (briefly) for the callbacks sent so far, so the final reply comes after them."""
        if self._last is not None and not self._last.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._last), timeout)
            except TimeoutError:
                logger.warning("Progress callbacks still running after %.0f s", timeout)


#: Sends a recovered reply to where the original message came from.
Deliver = Callable[[IncomingMessage, Reply], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    answered: int
    apologised: int
    failed: int


def utcnow() -> datetime:
    return datetime.now(UTC)


class Engine:
    """Answers :class:`IncomingMessage` objects with :class:`Reply` objects."""

    def __init__(
        self,
        repository: Repository,
        worker: InferenceWorker,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.repository = repository
        self.worker = worker
        self.settings = settings
        self.clock = clock
        self.commands = CommandContext(repository, settings, clock)
        self.safety = SafetyGuard(settings.crisis_resources)
        self._pending: Counter[tuple[str, str]] = Counter()
        self._warned: set[tuple[str, str]] = set()

    async def handle(self, message: IncomingMessage, sink: ReplySink | None = None) -> list[Reply]:
        """The replies to send for ``message``; empty when the message is not for the bot."""
        if not message.addressed_to_bot:
            return []
        text = sanitize(message.text)
        command = parse_command(text)
        try:
            if command is not None:
                return [await self.commands.run(command, message)]
            if is_blank(text):
                return [Reply(BLANK_TEXT_REPLY, kind=ReplyKind.NOTICE)]
            return await self._converse(message, text, sink or ReplySink())
        except WorkerStoppedError:
            logger.info(
                "Shutting down; a %s message stays pending for the next start", message.platform.value
            )
            return [Reply(RESTARTING_REPLY, kind=ReplyKind.NOTICE)]
        except MoodmateError as error:
            logger.exception("Could not answer a %s message", message.platform.value)
            return [self._failure_reply(text, error.user_message)]
        except Exception:
            logger.exception("Unexpected error answering a %s message", message.platform.value)
            return [self._failure_reply(text, MoodmateError.user_message)]

    def _failure_reply(self, text: str, user_message: str) -> Reply:
        """The error reply, unless the message was a crisis message: then its fixed crisis reply."""
        crisis = self.safety.fallback(text) if parse_command(text) is None else None
        return Reply(crisis, kind=ReplyKind.CHAT) if crisis else Reply(user_message, kind=ReplyKind.ERROR)

    async def _converse(self, message: IncomingMessage, text: str, sink: ReplySink) -> list[Reply]:
        key = (message.platform.value, message.user_id)
        if self._pending[key] >= self.settings.max_pending_per_user:
            if key in self._warned:
                return []
            self._warned.add(key)
            return [Reply(BUSY_REPLY, kind=ReplyKind.NOTICE)]
        self._pending[key] += 1
        try:
            user = await self.repository.ensure_user(
                message.platform.value, message.user_id, message.display_name
            )
            chat = await self.repository.ensure_chat(
                message.platform.value, message.chat_id, message.chat_is_private, user.id
            )
            stored = await self.repository.add_message(
                user.id, chat.id, "user", text, platform_message_id=message.message_id
            )
            return [await self._answer(user, chat, stored, text, sink)]
        finally:
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]
                self._warned.discard(key)

    async def _answer(
        self, user: UserRecord, chat: ChatRecord, stored: MessageRecord, text: str, sink: ReplySink
    ) -> Reply:
        model_text, truncated = truncate(text, self.settings.max_input_chars)
        # Everything the reply needs from storage is read before the mood read, so that the reply
        # joins the queue the moment the mood is known (no I/O in between lets others jump ahead).
        history = await self._history(user, chat, stored, model_text)
        safety = self.safety.review(model_text, history)
        if safety.crisis_reply is not None:
            return await self._answer_crisis(user, chat, stored, model_text, safety.crisis_reply)
        owner = f"{user.platform}:{user.platform_user_id}"
        progress = _ProgressRelay(sink)
        ahead = self.worker.calls_ahead(owner)
        if ahead:
            progress.send(sink.queued(ahead))
        mood: Mood | None = None
        reply: asyncio.Future[str] | None = None
        try:
            mood = await self.worker.read_mood(model_text)
            if progress.wants_mood:
                progress.send(sink.mood(mood))
            # Queue the reply before any other await, then log the mood while it is written.
            reply = self.worker.submit_reply(
                owner,
                safety.system_prompt(system_prompt_for(model_text)),
                reply_turns(history),
                max_new_tokens=self.settings.max_reply_tokens,
                on_partial=_throttled(progress) if safety.may_stream else None,
            )
            await self._log_mood(user, chat, stored, mood)
            raw = await reply
            await progress.drain()
        except (WorkerStoppedError, asyncio.CancelledError):
            if reply is not None:
                reply.cancel()
            raise  # shutting down: the message stays pending and is answered after the restart
        except Exception:
            if reply is not None:
                reply.cancel()
            await self._mark(stored.id, MessageStatus.FAILED)
            raise
        reply_text = safety.checked(clean_reply(raw, model_text, mood.label if mood is not None else None))
        if truncated:
            note = TRUNCATED_NOTE_ZH if is_chinese(text) else TRUNCATED_NOTE_EN
            reply_text = f"{reply_text}\n\n{note.format(chars=len(model_text))}"
        await self.repository.add_message(
            user.id, chat.id, "assistant", reply_text, status=MessageStatus.ANSWERED, reply_to_id=stored.id
        )
        await self.repository.set_message_status(stored.id, MessageStatus.ANSWERED)
        return Reply(reply_text, kind=ReplyKind.CHAT, mood=mood)

    async def _answer_crisis(
        self, user: UserRecord, chat: ChatRecord, stored: MessageRecord, text: str, reply_text: str
    ) -> Reply:
        """Answer a crisis message with its fixed reply; the model writes nothing. The mood is read and
        logged as usual, but the reply never waits long on the model, nor on one that fails."""
        try:
            mood = await asyncio.wait_for(self.worker.read_mood(text), CRISIS_MOOD_WAIT_SECONDS)
            await self._log_mood(user, chat, stored, mood)
        except Exception:
            logger.warning("No mood read for a crisis message; it is answered anyway", exc_info=True)
        await self.repository.add_message(
            user.id, chat.id, "assistant", reply_text, status=MessageStatus.ANSWERED, reply_to_id=stored.id
        )
        await self.repository.set_message_status(stored.id, MessageStatus.ANSWERED)
        await self.repository.add_safety_event(user.platform)
        logger.info("Sent the crisis reply to a %s message", user.platform)
        return Reply(reply_text, kind=ReplyKind.CHAT)

    async def _log_mood(
        self, user: UserRecord, chat: ChatRecord, stored: MessageRecord, mood: Mood | None
    ) -> None:
        """Log the mood read of ``stored`` unless the user turned mood logging off."""
        if mood is not None and user.mood_logging:
            await self.repository.add_mood(user.id, chat.id, stored.id, mood.label.value, mood.score)

    async def _history(
        self, user: UserRecord, chat: ChatRecord, stored: MessageRecord, text: str
    ) -> list[ChatTurn]:
        """This user's turns in this chat, newest kept first within the token budget, oldest first."""
        rows = await self.repository.history(user.id, chat.id, HISTORY_ROWS)
        model = self.worker.model
        budget = self.settings.history_tokens - model.count_tokens(text)
        turns: list[ChatTurn] = []
        for row in reversed(rows):
            if row.text is None or row.id == stored.id:
                continue
            cost = model.count_tokens(row.text)
            if cost > budget:
                break
            budget -= cost
            turns.append(ChatTurn("assistant" if row.role == "assistant" else "user", row.text))
        turns.reverse()
        # A conversation must start with the user's turn.
        while turns and turns[0].role != "user":
            turns.pop(0)
        turns.append(ChatTurn("user", text))
        return turns

    async def _mark(self, message_id: int, status: MessageStatus) -> None:
        try:
            await self.repository.set_message_status(message_id, status)
        except MoodmateError:
            logger.exception("Could not mark message %d as %s", message_id, status.value)

    # --- recovery after a crash ----------------------------------------------------------------

    async def recover_pending(self, deliver: Deliver) -> RecoveryReport:
        """Answer every message a previous run stored but never answered.

        Messages older than ``pending_max_age_minutes`` get a short apology instead of a late answer.
        """
        pending = await self.repository.pending_messages()
        max_age = timedelta(minutes=self.settings.pending_max_age_minutes)
        now = self.clock()
        answered = apologised = failed = 0
        for item in pending:
            incoming = _incoming_from(item)
            try:
                too_old = now - item.message.created_at > max_age
                if too_old and not self.safety.fallback(item.message.text or ""):  # a crisis is answered
                    reply = Reply(APOLOGY_REPLY, kind=ReplyKind.NOTICE)
                    await deliver(incoming, reply)
                    await self.repository.set_message_status(item.message.id, MessageStatus.APOLOGISED)
                    apologised += 1
                    continue
                text = item.message.text or ""
                reply = await self._answer(item.user, item.chat, item.message, text, ReplySink())
                await deliver(incoming, reply)
                answered += 1
            except WorkerStoppedError:
                raise
            except Exception:
                logger.exception("Could not recover pending message %d", item.message.id)
                await self._mark(item.message.id, MessageStatus.FAILED)
                failed += 1
        if pending:
            logger.info(
                "Recovered pending messages: %d answered, %d apologised, %d failed",
                answered,
                apologised,
                failed,
            )
        return RecoveryReport(answered=answered, apologised=apologised, failed=failed)


def _throttled(progress: _ProgressRelay) -> Callable[[str], None] | None:
    """A partial-text callback that forwards at most one update per ``PARTIAL_INTERVAL_SECONDS``."""
    if not progress.wants_partial:
        return None
    last_sent = 0.0

    def on_partial(text: str) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent < PARTIAL_INTERVAL_SECONDS:
            return  # cleaned only when shown: the text so far grows with every token
        shown = clean_partial(text)
        if shown:
            last_sent = now
            progress.send(progress.sink.partial(shown))

    return on_partial


def _incoming_from(item: PendingMessage) -> IncomingMessage:
    return IncomingMessage(
        platform=Platform(item.user.platform),
        chat_id=item.chat.platform_chat_id,
        user_id=item.user.platform_user_id,
        display_name=item.user.display_name,
        text=item.message.text or "",
        addressed_to_bot=True,
        chat_is_private=item.chat.is_private,
        message_id=item.message.platform_message_id,
    )
