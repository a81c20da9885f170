"""The engine: one path from an incoming message to a reply, for every platform.

Per message: store it (pending, claimed by this process) before any inference, read its mood with
a history-free prompt, write a reply from this user's own history in this chat, then store the
reply, its mood entry and the status ``replied`` in one transaction; the adapter reports the send
(:meth:`Engine.delivered`) and only then is the message ``answered``. While a message is being
answered this process renews its claim on it, so that no other process (or recovery) answers it
too. Every failure ends in a kind reply and a logged exception, never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.commands import CommandContext, parse_command
from bot.errors import DuplicateMessageError, MoodmateError
from bot.inference import InferenceWorker, TokenCounter, TurnsBuilder, WorkerStoppedError
from bot.model.base import ChatTurn
from bot.prompts import (
    clean_partial,
    clean_reply,
    reply_turns,
    system_prompt_for,
    with_language_hint,
)
from bot.records import ChatRecord, MessageRecord, MessageStatus, MoodRecord, PendingMessage, UserRecord
from bot.repository import Repository
from bot.safety.guard import SafetyGuard
from bot.settings import Settings
from bot.text import is_blank, is_chinese, sanitize, truncate
from bot.types import IncomingMessage, Mood, MoodLabel, Platform, Reply, ReplyKind

logger = logging.getLogger(__name__)

PARTIAL_INTERVAL_SECONDS = 1.0
PROGRESS_DRAIN_SECONDS = 5.0
HISTORY_ROWS = 40
#: How long a delivered-but-unconfirmed reply keeps its claim renewed before recovery may re-send it.
DELIVERY_HOLD_SECONDS = 900.0
#: How often a message looks again whether an earlier one of the same user (answered by another
#: process) is finished: first after this, then half as long again each time, at most TURN_POLL_MAX.
TURN_POLL_SECONDS = 0.05
TURN_POLL_MAX_SECONDS = 0.5
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


def _earlier_turns(rows: list[MessageRecord], answering_id: int) -> list[ChatTurn]:
    """The stored conversation before the message being answered, oldest first (purged texts left out)."""
    return [
        ChatTurn("assistant" if row.role == "assistant" else "user", row.text)
        for row in rows
        if row.text is not None and row.id != answering_id
    ]


def _from_user(turns: list[ChatTurn]) -> list[ChatTurn]:
    """``turns`` from the first user turn on: a conversation must start with the user's turn."""
    start = next((index for index, turn in enumerate(turns) if turn.role == "user"), len(turns))
    return turns[start:]


def _reply_turns_within(earlier: list[ChatTurn], text: str, budget: int) -> TurnsBuilder:
    """The reply prompt's turns for ``text``: the newest ``earlier`` turns that fit ``budget`` tokens
    together with ``text``, then ``text``. Built on the model thread, where tokens may be counted."""

    def build(count_tokens: TokenCounter) -> list[ChatTurn]:
        left = budget - count_tokens(text)
        kept: list[ChatTurn] = []
        for turn in reversed(earlier):
            cost = count_tokens(turn.content)
            if cost > left:
                break
            left -= cost
            kept.append(turn)
        kept.reverse()
        return reply_turns([*_from_user(kept), ChatTurn("user", text)])

    return build


class ReplySink:
    """Progress callbacks an adapter may implement while a message is answered (no-ops here)."""

    async def stored(self) -> None:
        """The message is stored and claimed: from now on it is answered even if this process dies
        (a webhook may acknowledge the update). Also called when it was stored already."""

    async def queued(self, position: int) -> None:
        """``position`` model calls are ahead of the message's reply (told once: on arrival, or when its
        mood is read, if calls are ahead then)."""

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
        self._told_queued = False

    def tell_queued(self, ahead: int) -> None:
        """Tell the sink how many calls are ahead, once per message and only when some are."""
        if ahead and not self._told_queued:
            self._told_queued = True
            self.send(self.sink.queued(ahead))

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


#: Sends a recovered reply to where the original message came from; returns once the platform took it.
Deliver = Callable[[IncomingMessage, Reply], Awaitable[None]]
#: Whether the platform's allowlists still admit the sender of a recovered message.
Admit = Callable[[IncomingMessage], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    answered: int
    apologised: int
    failed: int
    #: Replied before the stop but never delivered: sent again from the stored reply.
    resent: int = 0
    #: From senders the allowlists no longer admit: not answered.
    refused: int = 0


def default_instance_id() -> str:
    """A name unique to this process: host, process id and a random part."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        #: The name this process claims messages under.
        self.instance_id = settings.instance_id or default_instance_id()
        self.lease = timedelta(seconds=settings.claim_lease_seconds)
        # Messages this process holds a claim on -> when it stops renewing it (None: while answering).
        self._held: dict[int, float | None] = {}
        self._renewer: asyncio.Task[None] | None = None

    # --- claims --------------------------------------------------------------------------------

    def _lease_until(self) -> datetime:
        return utcnow() + self.lease

    def _hold(self, message_id: int, until: float | None = None) -> None:
        self._held[message_id] = until
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name="moodmate-claims")

    def _let_go(self, message_id: int) -> None:
        self._held.pop(message_id, None)

    async def _renew_loop(self) -> None:
        """Renew the claims this process holds every third of a lease, while it holds any."""
        interval = self.lease.total_seconds() / 3
        while self._held:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for message_id, until in list(self._held.items()):
                if until is not None and until < now:
                    logger.warning(
                        "Message %d: its delivery was never confirmed; recovery may re-send it", message_id
                    )
                    self._let_go(message_id)
            try:
                await self.repository.renew_claims(self.instance_id, list(self._held), self._lease_until())
            except MoodmateError:
                logger.exception("Could not renew this process's claims on messages")

    async def close(self) -> None:
        """Stop renewing claims and give up those still held, so that a restart answers them at once."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        self._held.clear()
        try:
            released = await self.repository.release_claims(self.instance_id)
        except MoodmateError:
            logger.exception("Could not release this process's claims; they expire with their lease")
            return
        if released:
            logger.info("Released %d unfinished messages for the next start", released)

    async def delivered(self, reply: Reply) -> None:
        """The platform accepted ``reply``: its message is answered (no-op for other replies)."""
        await self._finish_delivery(reply, MessageStatus.ANSWERED)

    async def not_delivered(self, reply: Reply) -> None:
        """The platform refused ``reply`` for good (the user was told): its message failed."""
        await self._finish_delivery(reply, MessageStatus.FAILED)

    async def _finish_delivery(self, reply: Reply, status: MessageStatus) -> None:
        if reply.answers_id is None:
            return
        self._let_go(reply.answers_id)
        await self._mark(reply.answers_id, status)

    async def _wait_turn(self, stored: MessageRecord) -> None:
        """Wait while another process answers an earlier message of this user in this chat (it holds
        a live claim on it), so that replies go out in order across processes. A message whose
        process died holds nothing up: recovery answers it when its lease has expired."""
        deadline = time.monotonic() + max(2 * self.lease.total_seconds(), 2 * self.settings.model_timeout)
        pause = TURN_POLL_SECONDS
        while await self.repository.unfinished_before(stored.id, self.instance_id, utcnow()):
            if time.monotonic() > deadline:
                logger.warning(
                    "Message %d: an earlier one is still being answered; answering anyway", stored.id
                )
                return
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, TURN_POLL_MAX_SECONDS)

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
        # A crisis message is never held back by the per-user limit.
        if self._pending[key] >= self.settings.max_pending_per_user and not self.safety.fallback(text):
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
            try:
                stored = await self.repository.add_message(
                    user.id,
                    chat.id,
                    "user",
                    text,
                    platform_message_id=message.message_id,
                    claimed_by=self.instance_id,
                    lease_until=self._lease_until(),
                )
            except DuplicateMessageError:
                logger.info("A %s message arrived twice; it is answered once", message.platform.value)
                await sink.stored()
                return []
            await sink.stored()
            self._hold(stored.id)
            try:
                await self._wait_turn(stored)
                reply = await self._answer(user, chat, stored, text, sink)
            except BaseException:
                self._let_go(stored.id)
                raise
            if reply is None:
                self._let_go(stored.id)
                return []
            self._hold(stored.id, until=time.monotonic() + DELIVERY_HOLD_SECONDS)
            return [reply]
        finally:
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]
                self._warned.discard(key)

    async def _answer(
        self, user: UserRecord, chat: ChatRecord, stored: MessageRecord, text: str, sink: ReplySink
    ) -> Reply | None:
        """The reply to ``stored`` (a claimed, pending message), stored with its mood entry in one
        transaction; None if this process lost its claim meanwhile (another one answers it)."""
        model_text, truncated = truncate(text, self.settings.max_input_chars)
        # Everything the reply needs from storage is read before the mood read, so that the reply
        # joins the queue the moment the mood is known (no I/O in between lets others jump ahead).
        earlier = _earlier_turns(await self.repository.history(user.id, chat.id, HISTORY_ROWS), stored.id)
        # The safety review reads the stored turns as they are: fitting them to the reply's token
        # budget needs the tokenizer, on the model thread, and a crisis reply never waits for it.
        conversation = [*_from_user(earlier), ChatTurn("user", model_text)]
        safety = self.safety.review(model_text, conversation)
        if safety.crisis_reply is not None:
            return await self._answer_crisis(user, chat, stored, model_text, safety.crisis_reply)
        owner = f"{user.platform}:{user.platform_user_id}"
        progress = _ProgressRelay(sink)
        progress.tell_queued(self.worker.calls_ahead(owner))
        mood: Mood | None = None
        reply: asyncio.Future[str] | None = None
        try:
            mood = await self.worker.read_mood(model_text)
            # Messages that arrive together are read in one mood batch, with nothing ahead on arrival;
            # the replies of those whose moods came first may be queued by now.
            progress.tell_queued(self.worker.calls_ahead(owner))
            if progress.wants_mood:
                progress.send(sink.mood(mood))
            reply = self.worker.submit_reply(
                owner,
                # The language hint goes by the last user turn, the message itself, which no trim drops.
                with_language_hint(safety.system_prompt(system_prompt_for(model_text)), conversation),
                _reply_turns_within(earlier, model_text, self.settings.history_tokens),
                max_new_tokens=self.settings.max_reply_tokens,
                on_partial=_throttled(progress) if safety.may_stream else None,
            )
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
        logged = (mood.label.value, mood.score) if mood is not None and user.mood_logging else None
        try:
            saved = await self.repository.finish_reply(
                stored.id, self.instance_id, reply_text, user_id=user.id, chat_id=chat.id, mood=logged
            )
        except Exception:
            await self._mark(stored.id, MessageStatus.FAILED)
            raise
        if saved is None:
            logger.info("Message %d was taken over by another process; it answers it", stored.id)
            return None
        return Reply(reply_text, kind=ReplyKind.CHAT, mood=mood, answers_id=stored.id)

    async def _answer_crisis(
        self, user: UserRecord, chat: ChatRecord, stored: MessageRecord, text: str, reply_text: str
    ) -> Reply | None:
        """Answer a crisis message with its fixed reply; the model writes nothing. The mood is read and
        logged with the reply in one transaction, but the reply never waits long on the model, nor on
        one that fails."""
        mood: Mood | None = None
        try:
            mood = await asyncio.wait_for(self.worker.read_mood(text), CRISIS_MOOD_WAIT_SECONDS)
        except Exception:
            logger.warning("No mood read for a crisis message; it is answered anyway", exc_info=True)
        logged = (mood.label.value, mood.score) if mood is not None and user.mood_logging else None
        saved = await self.repository.finish_reply(
            stored.id, self.instance_id, reply_text, user_id=user.id, chat_id=chat.id, mood=logged
        )
        if saved is None:
            logger.info("Message %d was taken over by another process; it answers it", stored.id)
            return None
        await self.repository.add_safety_event(user.platform)
        logger.info("Sent the crisis reply to a %s message", user.platform)
        return Reply(reply_text, kind=ReplyKind.CHAT, answers_id=stored.id)

    async def _mark(self, message_id: int, status: MessageStatus) -> None:
        try:
            await self.repository.set_message_status(message_id, status)
        except MoodmateError:
            logger.exception("Could not mark message %d as %s", message_id, status.value)

    # --- recovery after a crash ----------------------------------------------------------------

    async def _deliver_and_confirm(self, deliver: Deliver, incoming: IncomingMessage, reply: Reply) -> None:
        """Send ``reply``; once the platform took it, its confirmation commits even if we are stopping."""
        await deliver(incoming, reply)
        confirming = asyncio.ensure_future(self.delivered(reply))
        try:
            await asyncio.shield(confirming)
        except asyncio.CancelledError:
            await confirming
            raise

    async def recover_pending(
        self,
        deliver: Deliver,
        admit: Admit | None = None,
        platforms: Collection[Platform] | None = None,
    ) -> RecoveryReport:
        """Finish every message a previous run (or a process that died) left unfinished.

        Takes only messages nobody holds a claim on, or whose claim's lease expired, and claims
        each before touching it, so that live handling and other processes never answer it too.
        A message whose reply was stored but not delivered is sent again from the stored reply;
        one still pending is answered, or, when older than ``pending_max_age_minutes``, gets a short
        apology. ``admit`` (the adapters' allowlists) refuses senders no longer allowed;
        ``platforms`` limits recovery to the platforms this process can deliver to.
        """
        pending = await self.repository.pending_messages(claimable_at=utcnow())
        max_age = timedelta(minutes=self.settings.pending_max_age_minutes)
        now = self.clock()
        answered = apologised = failed = resent = refused = 0
        for item in pending:
            if platforms is not None and item.user.platform not in {p.value for p in platforms}:
                continue
            message_id = item.message.id
            if not await self.repository.claim_message(
                message_id, self.instance_id, self._lease_until(), utcnow()
            ):
                continue  # answered live, or by another process, since the list was read
            self._hold(message_id)
            incoming = _incoming_from(item)
            try:
                if admit is not None and not await admit(incoming):
                    await self.repository.set_message_status(message_id, MessageStatus.REFUSED)
                    refused += 1
                    continue
                if item.message.status == MessageStatus.REPLIED.value:
                    if item.reply is None or item.reply.text is None:
                        raise MoodmateError(f"message {message_id} was replied but its reply is gone")
                    reply = Reply(
                        item.reply.text, kind=ReplyKind.CHAT, mood=_mood_of(item.mood), answers_id=message_id
                    )
                    await self._deliver_and_confirm(deliver, incoming, reply)
                    resent += 1
                    continue
                too_old = now - item.message.created_at > max_age
                if too_old and not self.safety.fallback(item.message.text or ""):  # a crisis is answered
                    await deliver(incoming, Reply(APOLOGY_REPLY, kind=ReplyKind.NOTICE))
                    await self.repository.set_message_status(message_id, MessageStatus.APOLOGISED)
                    apologised += 1
                    continue
                text = item.message.text or ""
                answer = await self._answer(item.user, item.chat, item.message, text, ReplySink())
                if answer is None:
                    continue
                await self._deliver_and_confirm(deliver, incoming, answer)
                answered += 1
            except WorkerStoppedError:
                raise
            except Exception:
                logger.exception("Could not recover pending message %d", message_id)
                await self._mark(message_id, MessageStatus.FAILED)
                failed += 1
            finally:
                self._let_go(message_id)
        if answered or apologised or failed or resent or refused:
            logger.info(
                "Recovered pending messages: %d answered, %d re-sent, %d apologised, %d refused, %d failed",
                answered,
                resent,
                apologised,
                refused,
                failed,
            )
        return RecoveryReport(
            answered=answered, apologised=apologised, failed=failed, resent=resent, refused=refused
        )


def _mood_of(record: MoodRecord | None) -> Mood | None:
    if record is None:
        return None
    try:
        return Mood(label=MoodLabel(record.label), score=record.score)
    except ValueError:
        return None


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
