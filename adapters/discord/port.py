"""The delivery ports for Discord: a channel (answering a message there) and an interaction.

Every message goes out with ``allowed_mentions`` none; a send carries one nonce for all its tries
(discord.py sends it with ``enforce_nonce``), so a retry after an answer lost on its way back gets
the message already created, not a second one. Buttons and files ride on the message they belong
to. Discord has no native streaming: a preview is a message edited as the reply grows.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import discord
from discord.utils import MISSING

from adapters.discord.formatting import in_progress_text, reply_text, split_for_discord
from adapters.discord.sending import NO_MENTIONS, ActionButtons, call_discord, files_for
from bot.delivery import Outgoing, Place, PortLimits, Posted, PrivateNotes, RefusedError
from bot.delivery.timing import ATTEMPTS
from bot.types import Mood, Reply

#: Discord shows "is typing…" for about ten seconds per trigger.
TYPING_INTERVAL_SECONDS = 8.0

#: Opens the DM with the person answered.
OpenDM = Callable[[], Awaitable[discord.abc.Messageable]]


def _extras(message: Outgoing) -> dict[str, object]:
    """The buttons and fresh files (each try consumes them) that go with ``message``."""
    extras: dict[str, object] = {}
    if message.attachments:
        extras["files"] = files_for(message.attachments)
    if message.actions:
        extras["view"] = ActionButtons(message.actions)
    return extras


class ChannelPort:
    """A channel or DM, answering ``reference`` (a message, in servers) or nothing (in DMs).

    ``heading`` starts the first message of every reply (a recovered answer names its person);
    ``on_sent`` learns every message posted (to recognise replies to them).
    """

    def __init__(
        self,
        channel: discord.abc.Messageable,
        place: Place,
        *,
        reference: discord.MessageReference | None = None,
        open_dm: OpenDM | None = None,
        on_sent: Callable[[discord.Message], None] | None = None,
        heading: str = "",
    ) -> None:
        self._channel = channel
        self.place = place
        self._reference = reference
        self._open_dm = open_dm
        self._on_sent = on_sent
        self._heading = heading

    def render(self, reply: Reply) -> list[str]:
        if not (reply.text or self._heading):
            return []
        return split_for_discord(self._heading + reply_text(reply))

    def preview(self, mood: Mood, text: str) -> str | None:
        return in_progress_text(mood, text)

    async def post(self, message: Outgoing, *, quote: bool, retry: bool = True) -> Posted:
        nonce = secrets.randbits(63)  # one for every try

        async def send() -> discord.Message:
            kwargs: dict[str, object] = {"allowed_mentions": NO_MENTIONS, "nonce": nonce, **_extras(message)}
            if quote and self._reference is not None:
                kwargs["reference"] = self._reference
                kwargs["mention_author"] = False
            # discord.py's overloads take no None for a reference, view or files left out (its
            # implementation does), so those go in through **kwargs, which overloads cannot check.
            sent: discord.Message = await self._channel.send(message.text, **kwargs)  # type: ignore[call-overload]
            return sent

        sent = await call_discord("send a message", send, attempts=ATTEMPTS if retry else 1)
        if self._on_sent is not None:
            self._on_sent(sent)
        return Posted(sent, message.text)

    async def edit(self, posted: Posted, message: Outgoing, *, retry: bool = True) -> Posted:
        shown = posted.ref
        assert isinstance(shown, discord.Message)

        async def edit() -> None:
            await shown.edit(  # MISSING: leave the buttons or files as they are
                content=message.text,
                allowed_mentions=NO_MENTIONS,
                view=ActionButtons(message.actions) if message.actions else MISSING,
                attachments=files_for(message.attachments) if message.attachments else MISSING,
            )

        await call_discord("edit a message", edit, attempts=ATTEMPTS if retry else 1)
        return Posted(shown, message.text)

    async def delete(self, posted: Posted) -> None:
        if isinstance(posted.ref, discord.Message):
            await call_discord("delete a message", posted.ref.delete, attempts=1)

    async def typing(self) -> None:
        await self._channel.typing()

    async def open_private(self) -> ChannelPort:
        if self._open_dm is None:
            raise RefusedError("No DM is known for this person.")
        dm = await call_discord("open a DM", self._open_dm)
        place = Place(("channel", getattr(dm, "id", id(dm))), True, self.place.limits, self.place.notes)
        return ChannelPort(dm, place, on_sent=self._on_sent)


#: Stands for the message an interaction answers (the pressed one, or "thinking…").
ORIGINAL = Posted("original response", None)


class InteractionPort:
    """Answers to a slash command or a button press: follow-ups (ephemeral in servers), and the
    original response (:data:`ORIGINAL`) edited or deleted. Never routed elsewhere (its place is
    private): only the person sees an ephemeral answer, and a pressed message is answered in place."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool, notes: PrivateNotes) -> None:
        self._interaction = interaction
        self._ephemeral = ephemeral
        limits = PortLimits(TYPING_INTERVAL_SECONDS, stream_delay=None)
        self.place = Place(("interaction", interaction.id), True, limits, notes)

    def render(self, reply: Reply) -> list[str]:
        return split_for_discord(reply_text(reply)) if reply.text else []

    def preview(self, mood: Mood, text: str) -> str | None:
        return None

    async def post(self, message: Outgoing, *, quote: bool, retry: bool = True) -> Posted:
        async def send() -> object:
            # As in ChannelPort.post: the overloads take no None for a view or files left out.
            return await self._interaction.followup.send(  # type: ignore[call-overload]
                message.text, allowed_mentions=NO_MENTIONS, ephemeral=self._ephemeral, **_extras(message)
            )

        sent = await call_discord("send a follow-up", send, attempts=ATTEMPTS if retry else 1)
        return Posted(sent, message.text)

    async def edit(self, posted: Posted, message: Outgoing, *, retry: bool = True) -> Posted:
        if posted.ref != ORIGINAL.ref:
            raise RefusedError("Only the original response of an interaction is edited.")

        async def edit() -> None:
            await self._interaction.edit_original_response(
                content=message.text,
                allowed_mentions=NO_MENTIONS,
                # None takes the pressed buttons off; MISSING leaves the files as they are
                view=ActionButtons(message.actions) if message.actions else None,
                attachments=files_for(message.attachments) if message.attachments else MISSING,
            )

        await call_discord("edit a message", edit, attempts=ATTEMPTS if retry else 1)
        return Posted(ORIGINAL.ref, message.text)

    async def delete(self, posted: Posted) -> None:
        if posted.ref == ORIGINAL.ref:
            await call_discord("finish a command", self._interaction.delete_original_response)

    async def typing(self) -> None:
        """Discord shows "thinking…" for a deferred interaction."""

    async def open_private(self) -> InteractionPort:
        return self
