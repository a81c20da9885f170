"""The delivery port for one Telegram chat (and forum topic): the core's lifecycle, in Bot API calls.

Texts are plain (no ``parse_mode``), link previews off; the first message of an answer quotes the
message it answers (in groups), and every message names the forum topic it belongs to. Buttons
become an inline keyboard; files follow the message as photos or documents.
"""

from __future__ import annotations

from adapters.telegram.addressing import topic_of
from adapters.telegram.formatting import TEXT_LIMIT, preview_text, reply_texts, utf16_len
from adapters.telegram.outbox import Outbox, keyboard_for
from bot.delivery import PortLimits, Posted, PrivateNotes
from bot.presentation import mood_badge
from bot.types import Action, Attachment, Mood, Reply

#: Telegram clears "typing…" after about five seconds, so it is renewed a little sooner.
TYPING_INTERVAL_SECONDS = 4.0
#: In groups Telegram allows about 20 messages a minute, so previews there change less often
#: (with "typing…" renewed every 4 s that is still ~30 requests a minute while a reply is written;
#: the bot's rate limiter paces them, and a 429 delays rather than drops).
GROUP_EDIT_INTERVAL_SECONDS = 4.0


class TelegramPort:
    """One chat: ``chat_id``, quoting ``reply_to``, in forum topic ``thread_id``; ``user_id`` is the
    person answered (for answers that go to their private chat)."""

    def __init__(
        self,
        outbox: Outbox,
        chat_id: int,
        *,
        user_id: int,
        private: bool,
        limits: PortLimits,
        private_notes: PrivateNotes,
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> None:
        self._outbox = outbox
        self._chat_id = chat_id
        self._user_id = user_id
        self._private = private
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._limits = limits
        self._notes = private_notes
        self._place = (chat_id, thread_id)

    @property
    def limits(self) -> PortLimits:
        return self._limits

    @property
    def place(self) -> tuple[int, int | None]:
        return self._place

    @property
    def private(self) -> bool:
        return self._private

    @property
    def private_notes(self) -> PrivateNotes:
        return self._notes

    def render(self, reply: Reply) -> list[str]:
        return reply_texts(reply)

    def preview(self, mood: Mood, text: str) -> str | None:
        if not text.strip():
            return None
        badge = mood_badge(mood) + "\n"
        return badge + preview_text(text, TEXT_LIMIT - utf16_len(badge))

    async def post(
        self,
        text: str | None,
        *,
        quote: bool,
        actions: tuple[Action, ...] = (),
        attachments: tuple[Attachment, ...] = (),
        retry: bool = True,
    ) -> Posted:
        posted = Posted(None, None)
        if text is not None:
            sent = await self._outbox.text(
                self._chat_id,
                text,
                reply_to=self._reply_to if quote else None,
                thread_id=self._thread_id,
                markup=keyboard_for(actions),
                retry=retry,
            )
            if self._thread_id is None:  # a reply lands in its target's topic (recovered answers)
                self._thread_id = topic_of(sent)
            posted = Posted(sent.message_id, text)
        await self._send_files(attachments)
        return posted

    async def edit(
        self,
        posted: Posted,
        text: str,
        *,
        actions: tuple[Action, ...] = (),
        attachments: tuple[Attachment, ...] = (),
        retry: bool = True,
    ) -> Posted:
        assert isinstance(posted.ref, int)
        await self._outbox.edit(self._chat_id, posted.ref, text, markup=keyboard_for(actions), retry=retry)
        await self._send_files(attachments)
        return Posted(posted.ref, text)

    async def delete(self, posted: Posted) -> None:
        if isinstance(posted.ref, int):
            await self._outbox.delete(self._chat_id, posted.ref)

    async def typing(self) -> None:
        await self._outbox.typing(self._chat_id, thread_id=self._thread_id)

    async def open_private(self) -> TelegramPort:
        """The private chat (Telegram refuses there with 403 if the person never started the bot)."""
        return TelegramPort(
            self._outbox,
            self._user_id,
            user_id=self._user_id,
            private=True,
            limits=self._limits,
            private_notes=self._notes,
        )

    async def _send_files(self, attachments: tuple[Attachment, ...]) -> None:
        for attachment in attachments:
            await self._outbox.attachment(self._chat_id, attachment, thread_id=self._thread_id)
