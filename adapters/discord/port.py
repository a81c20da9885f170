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

from adapters.discord.formatting import in_progress_text, reply_text, split_for_discord
from adapters.discord.sending import NO_MENTIONS, ActionButtons, call_discord, files_for
from bot.delivery import PortLimits, Posted, PrivateNotes, RefusedError
from bot.delivery.timing import ATTEMPTS
from bot.types import Action, Attachment, Mood, Reply

#: Discord shows "is typing…" for about ten seconds per trigger.
TYPING_INTERVAL_SECONDS = 8.0

#: Opens the DM with the person answered.
OpenDM = Callable[[], Awaitable[discord.abc.Messageable]]


def _extras(actions: tuple[Action, ...], attachments: tuple[Attachment, ...]) -> dict[str, object]:
    extras: dict[str, object] = {}
    if attachments:
        extras["files"] = files_for(attachments)
    if actions:
        extras["view"] = ActionButtons(actions)
    return extras


class ChannelPort:
    """A channel or DM, answering ``reference`` (a message, in servers) or nothing (in DMs).

    ``heading`` starts the first message of every reply (a recovered answer names its person);
    ``on_sent`` learns every message posted (to recognise replies to them).
    """

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        limits: PortLimits,
        private: bool,
        private_notes: PrivateNotes,
        reference: discord.MessageReference | None = None,
        open_dm: OpenDM | None = None,
        on_sent: Callable[[discord.Message], None] | None = None,
        heading: str = "",
    ) -> None:
        self._channel = channel
        self._limits = limits
        self._private = private
        self._notes = private_notes
        self._reference = reference
        self._open_dm = open_dm
        self._on_sent = on_sent
        self._heading = heading

    @property
    def limits(self) -> PortLimits:
        return self._limits

    @property
    def place(self) -> object:
        return ("channel", getattr(self._channel, "id", id(self._channel)))

    @property
    def private(self) -> bool:
        return self._private

    @property
    def private_notes(self) -> PrivateNotes:
        return self._notes

    def render(self, reply: Reply) -> list[str]:
        if not (reply.text or self._heading):
            return []
        return split_for_discord(self._heading + reply_text(reply))

    def preview(self, mood: Mood, text: str) -> str | None:
        return in_progress_text(mood, text)

    async def post(
        self,
        text: str | None,
        *,
        quote: bool,
        actions: tuple[Action, ...] = (),
        attachments: tuple[Attachment, ...] = (),
        retry: bool = True,
    ) -> Posted:
        nonce = secrets.randbits(63)  # one for every try

        async def send() -> discord.Message:
            kwargs: dict[str, object] = {"allowed_mentions": NO_MENTIONS, "nonce": nonce}
            if quote and self._reference is not None:
                kwargs["reference"] = self._reference
                kwargs["mention_author"] = False
            kwargs.update(_extras(actions, attachments))  # fresh files for every try
            return await self._channel.send(text, **kwargs)  # type: ignore[arg-type]

        sent = await call_discord("send a message", send, attempts=ATTEMPTS if retry else 1)
        if self._on_sent is not None:
            self._on_sent(sent)
        return Posted(sent, text)

    async def edit(
        self,
        posted: Posted,
        text: str,
        *,
        actions: tuple[Action, ...] = (),
        attachments: tuple[Attachment, ...] = (),
        retry: bool = True,
    ) -> Posted:
        message = posted.ref
        assert isinstance(message, discord.Message)

        async def edit() -> None:
            kwargs: dict[str, object] = {"content": text, "allowed_mentions": NO_MENTIONS}
            if actions:
                kwargs["view"] = ActionButtons(actions)
            if attachments:
                kwargs["attachments"] = files_for(attachments)
            await message.edit(**kwargs)  # type: ignore[arg-type]

        await call_discord("edit a message", edit, attempts=ATTEMPTS if retry else 1)
        return Posted(message, text)

    async def delete(self, posted: Posted) -> None:
        message = posted.ref
        if isinstance(message, discord.Message):
            await call_discord("delete a message", message.delete, attempts=1)

    async def typing(self) -> None:
        await self._channel.typing()

    async def open_private(self) -> ChannelPort:
        if self._open_dm is None:
            raise RefusedError("No DM is known for this person.")
        dm = await call_discord("open a DM", self._open_dm)
        return ChannelPort(
            dm, limits=self._limits, private=True, private_notes=self._notes, on_sent=self._on_sent
        )


#: Stands for the message an interaction answers (the pressed one, or "thinking…").
ORIGINAL = Posted("original response", None)


class InteractionPort:
    """Answers to a slash command or a button press: follow-ups (ephemeral in servers), and the
    original response (:data:`ORIGINAL`) edited or deleted. Never routed elsewhere: only the person
    sees an ephemeral answer, and a pressed message is answered in place."""

    def __init__(
        self, interaction: discord.Interaction, *, ephemeral: bool, private_notes: PrivateNotes
    ) -> None:
        self._interaction = interaction
        self._ephemeral = ephemeral
        self._notes = private_notes

    @property
    def limits(self) -> PortLimits:
        return PortLimits(TYPING_INTERVAL_SECONDS, stream_delay=None)

    @property
    def place(self) -> object:
        return ("interaction", self._interaction.id)

    @property
    def private(self) -> bool:
        return True

    @property
    def private_notes(self) -> PrivateNotes:
        return self._notes

    def render(self, reply: Reply) -> list[str]:
        return split_for_discord(reply_text(reply)) if reply.text else []

    def preview(self, mood: Mood, text: str) -> str | None:
        return None

    async def post(
        self,
        text: str | None,
        *,
        quote: bool,
        actions: tuple[Action, ...] = (),
        attachments: tuple[Attachment, ...] = (),
        retry: bool = True,
    ) -> Posted:
        async def send() -> object:
            kwargs: dict[str, object] = {"allowed_mentions": NO_MENTIONS, "ephemeral": self._ephemeral}
            kwargs.update(_extras(actions, attachments))
            return await self._interaction.followup.send(text, **kwargs)  # type: ignore[call-overload]

        return Posted(await call_discord("send a follow-up", send, attempts=ATTEMPTS if retry else 1), text)

    async def edit(
        self,
        posted: Posted,
        text: str,
        *,
        actions: tuple[Action, ...] = (),
        attachments: tuple[Attachment, ...] = (),
        retry: bool = True,
    ) -> Posted:
        if posted.ref != ORIGINAL.ref:
            raise RefusedError("Only the original response of an interaction is edited.")

        async def edit() -> None:
            kwargs: dict[str, object] = {"content": text, "allowed_mentions": NO_MENTIONS}
            kwargs["view"] = ActionButtons(actions) if actions else None  # the pressed buttons go
            if attachments:
                kwargs["attachments"] = files_for(attachments)
            await self._interaction.edit_original_response(**kwargs)  # type: ignore[arg-type]

        await call_discord("edit a message", edit, attempts=ATTEMPTS if retry else 1)
        return Posted(ORIGINAL.ref, text)

    async def delete(self, posted: Posted) -> None:
        if posted.ref == ORIGINAL.ref:
            await call_discord("finish a command", self._interaction.delete_original_response)

    async def typing(self) -> None:
        """Discord shows "thinking…" for a deferred interaction."""

    async def open_private(self) -> InteractionPort:
        return self
