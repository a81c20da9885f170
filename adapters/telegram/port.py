"""The delivery port for one Telegram chat (and forum topic): the core's lifecycle, in Bot API calls.

Texts are plain (no ``parse_mode``), link previews off; the first message of an answer quotes the
message it answers (in groups), and every message names the forum topic it belongs to. Buttons
become an inline keyboard; files follow the message as photos or documents.
"""

from __future__ import annotations

from adapters.telegram.addressing import topic_of
from adapters.telegram.formatting import TEXT_LIMIT, preview_text, reply_texts, utf16_len
from adapters.telegram.outbox import Outbox, keyboard_for
from bot.delivery import Outgoing, Place, PortLimits, Posted, PrivateNotes
from bot.presentation import mood_badge
from bot.types import Attachment, Mood, Reply

#: Telegram clears "typing…" after about five seconds, so it is renewed a little sooner.
TYPING_INTERVAL_SECONDS = 4.0
#: In groups Telegram allows about 20 messages a minute, so previews there change less often
#: (with "typing…" renewed every 4 s that is still ~30 requests a minute while a reply is written;
#: the bot's rate limiter paces them, and a 429 delays rather than drops).
GROUP_EDIT_INTERVAL_SECONDS = 4.0


def place_for(
    chat_id: int, thread_id: int | None, *, private: bool, limits: PortLimits, notes: PrivateNotes
) -> Place:
    """The place of a chat (and forum topic): "typing…" is shared there."""
    return Place((chat_id, thread_id), private, limits, notes)


def place_topic(place: Place) -> int | None:
    """The forum topic of a place made by :func:`place_for`."""
    key = place.key
    thread_id = key[1] if isinstance(key, tuple) and len(key) == 2 else None
    return thread_id if isinstance(thread_id, int) else None


class TelegramPort:
    """One chat at ``place``: ``chat`` is (chat id, the id of the person answered, for answers that
    go to their private chat); the first message of a reply quotes ``reply_to``."""

    def __init__(
        self, outbox: Outbox, place: Place, chat: tuple[int, int], *, reply_to: int | None = None
    ) -> None:
        self._outbox = outbox
        self.place = place
        self._chat_id, self._user_id = chat
        self._reply_to = reply_to
        #: The forum topic: the one of the place, else (for recovered answers) the replied-to one.
        self._thread_id: int | None = place_topic(place)

    def render(self, reply: Reply) -> list[str]:
        return reply_texts(reply)

    def preview(self, mood: Mood, text: str) -> str | None:
        if not text.strip():
            return None
        badge = mood_badge(mood) + "\n"
        return badge + preview_text(text, TEXT_LIMIT - utf16_len(badge))

    async def post(self, message: Outgoing, *, quote: bool, retry: bool = True) -> Posted:
        posted = Posted(None, None)
        if message.text is not None:
            sent = await self._outbox.text(
                self._chat_id,
                message.text,
                reply_to=self._reply_to if quote else None,
                thread_id=self._thread_id,
                markup=keyboard_for(message.actions),
                retry=retry,
            )
            if self._thread_id is None:  # a reply lands in its target's topic (recovered answers)
                self._thread_id = topic_of(sent)
            posted = Posted(sent.message_id, message.text)
        await self._send_files(message.attachments)
        return posted

    async def edit(self, posted: Posted, message: Outgoing, *, retry: bool = True) -> Posted:
        assert isinstance(posted.ref, int) and message.text is not None
        markup = keyboard_for(message.actions)
        await self._outbox.edit(self._chat_id, posted.ref, message.text, markup=markup, retry=retry)
        await self._send_files(message.attachments)
        return Posted(posted.ref, message.text)

    async def delete(self, posted: Posted) -> None:
        if isinstance(posted.ref, int):
            await self._outbox.delete(self._chat_id, posted.ref)

    async def typing(self) -> None:
        await self._outbox.typing(self._chat_id, thread_id=self._thread_id)

    async def open_private(self) -> TelegramPort:
        """The private chat (Telegram refuses there with 403 if the person never started the bot)."""
        place = place_for(self._user_id, None, private=True, limits=self.place.limits, notes=self.place.notes)
        return TelegramPort(self._outbox, place, (self._user_id, self._user_id))

    async def _send_files(self, attachments: tuple[Attachment, ...]) -> None:
        for attachment in attachments:
            await self._outbox.attachment(self._chat_id, attachment, thread_id=self._thread_id)
