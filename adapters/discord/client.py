"""The discord.py client: intents, safe defaults, and event hooks that hand over to the adapter."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from adapters.discord.commands import RunCommand, build_command_tree
from adapters.discord.sending import NO_MENTIONS
from bot.errors import ConfigurationError
from bot.settings import Settings


class ClientHandlers(Protocol):
    """What the client calls back into (the adapter)."""

    async def on_setup(self, client: MoodmateClient) -> None: ...

    async def on_message(self, message: discord.Message) -> None: ...

    async def on_action(self, interaction: discord.Interaction, command: str) -> None: ...

    async def on_slash_command(self, interaction: discord.Interaction, text: str) -> None: ...


def moodmate_intents() -> discord.Intents:
    """Default intents plus Message Content (privileged: it must be enabled in the developer portal)."""
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


@dataclass(frozen=True, slots=True)
class Shards:
    """Which of the bot's ``count`` gateway shards this process runs (``ids``)."""

    count: int
    ids: tuple[int, ...]


def shards_from_settings(settings: Settings) -> Shards | None:
    """Interpret DISCORD_SHARD_COUNT / DISCORD_SHARD_IDS; None: one process, no sharding."""
    count, raw_ids = settings.discord_shard_count, settings.discord_shard_ids
    if count is None:
        if raw_ids:
            raise ConfigurationError(
                "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT, the bot's total number of shards."
            )
        return None
    if not all(part.isdigit() for part in raw_ids):
        raise ConfigurationError("DISCORD_SHARD_IDS must be comma-separated shard numbers, e.g. 0,1.")
    ids = tuple(sorted(int(part) for part in raw_ids)) or tuple(range(count))
    if any(shard >= count for shard in ids):
        raise ConfigurationError(
            f"DISCORD_SHARD_IDS must be below DISCORD_SHARD_COUNT ({count}): "
            f"shards are numbered 0 to {count - 1}."
        )
    return Shards(count=count, ids=ids)


class MoodmateClient(discord.Client):
    """A ``discord.Client`` that never pings anyone by default and keeps no message cache."""

    def __init__(self, handlers: ClientHandlers, **sharding: Any) -> None:
        sharding.pop("intents", None)  # AutoShardedClient hands on the ones given below: the same
        # moodmate never joins voice: skip discord.py's start-up warnings about voice libraries.
        for flag in ("warn_nacl", "warn_dave"):
            if getattr(discord.VoiceClient, flag, False):
                setattr(discord.VoiceClient, flag, False)
        super().__init__(
            intents=moodmate_intents(),
            allowed_mentions=NO_MENTIONS,
            # Messages not addressed to moodmate must not be kept anywhere, not even in memory.
            max_messages=None,
            chunk_guilds_at_startup=False,
            **sharding,
        )
        self.handlers = handlers
        run: RunCommand = handlers.on_slash_command
        self.tree = build_command_tree(self, run)
        #: Set when the gateway's READY arrives (again after every new session).
        self.gateway_ready = asyncio.Event()

    async def setup_hook(self) -> None:
        await self.handlers.on_setup(self)

    async def on_connect(self) -> None:
        # discord.py dispatches "connect" while parsing READY; "ready" waits for guild streaming.
        self.gateway_ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.handlers.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Slash commands go through ``self.tree``; buttons carry the command as their custom_id.
        if interaction.type is not discord.InteractionType.component:
            return
        custom_id = interaction.data.get("custom_id") if interaction.data is not None else None
        if isinstance(custom_id, str) and custom_id.startswith("/"):
            await self.handlers.on_action(interaction, custom_id)


class MoodmateShardedClient(discord.AutoShardedClient, MoodmateClient):
    """The same client running several shards of the bot in this process."""

    def __init__(self, handlers: ClientHandlers, **sharding: Any) -> None:
        # AutoShardedClient's __init__ comes first in the method order and requires the intents.
        super().__init__(handlers, intents=moodmate_intents(), **sharding)


def build_client(handlers: ClientHandlers, shards: Shards | None) -> MoodmateClient:
    """The client for this process: unsharded, one shard, or several shards."""
    if shards is None:
        return MoodmateClient(handlers)
    if len(shards.ids) == 1:
        return MoodmateClient(handlers, shard_id=shards.ids[0], shard_count=shards.count)
    return MoodmateShardedClient(handlers, shard_ids=list(shards.ids), shard_count=shards.count)
