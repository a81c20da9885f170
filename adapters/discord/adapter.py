"""The Discord adapter: discord.py events in, engine replies out.

* DMs: every message is answered. Server channels: only when moodmate is mentioned (its user or
  its managed role), replied to, or the channel is listed in ``discord_free_channel_ids``.
  Anything else, and anything from a bot (moodmate included), is ignored before the engine sees
  it, so it is neither answered nor stored. Conversations are per user per channel.
* Slash commands run the core commands; they are deferred first (Discord allows three seconds)
  and answered with follow-ups, ephemeral in servers. Reply actions become buttons whose
  ``custom_id`` is the command to run.
* While the model works: a typing indicator (until the final text is delivered), and the queue
  position when the message waits.
* Progressive display (``settings.stream_replies``, on by default) for answers to messages, in DMs
  and in servers, as the core's :mod:`bot.delivery` runs it for every platform (a slow reply shown
  while written after 1.5 s, edited at most every 1.5 s, finished in place). Partial text goes out
  with ``allowed_mentions`` none, like everything else. Discord cannot stream natively, edits are
  rate limited per channel (about 5 per 5 s, which discord.py waits out) and each edit redraws the
  message for everyone: one edit per 1.5 s keeps well under the limit. Only the first message is
  shown in progress. Slash commands and buttons are deferred and answered once.
* This module translates events into ``IncomingMessage``; :mod:`adapters.discord.port` is the
  core's port (a channel, an interaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiohttp
import discord
from discord.utils import escape_markdown

from adapters.discord.access import AccessPolicy
from adapters.discord.client import MoodmateClient, build_client, shards_from_settings
from adapters.discord.endpoints import EndpointOverride
from adapters.discord.formatting import readable_mentions, strip_bot_mentions
from adapters.discord.port import ORIGINAL, TYPING_INTERVAL_SECONDS, ChannelPort, InteractionPort
from adapters.discord.sending import NO_MENTIONS, call_discord, platform_error
from bot.delivery import Delivery, Place, PortLimits, PrivateNotes
from bot.delivery.timing import EDIT_INTERVAL_SECONDS, STREAM_DELAY_SECONDS
from bot.engine import Engine
from bot.errors import ConfigurationError, MoodmateError, PlatformError
from bot.settings import Settings
from bot.types import IncomingMessage, Platform, Reply, ReplyKind

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
SENT_IDS_KEPT = 5000

MISSING_TOKEN = "DISCORD_TOKEN is not set; copy the bot token from the Discord developer portal (Bot page)."
BAD_TOKEN = (
    "Discord rejected DISCORD_TOKEN (401 Unauthorized); reset the token on the developer portal's "
    "Bot page and put the new one in DISCORD_TOKEN."
)
INTENT_REFUSED = (
    'Discord refused the Message Content intent: enable "Message Content Intent" under Privileged '
    "Gateway Intents on your application's Bot page in the Discord developer portal, then restart moodmate."
)
NOT_HERE = "moodmate isn't enabled here. Ask the server's admins, or talk to me where I'm allowed."
PRIVATE_SENT = "📬 That's about your own data, so I sent it to you in a DM."
PRIVATE_NOT_SENT = (
    "That's about your own data, so I won't post it here, and I couldn't DM you. "
    "Use the slash command instead (only you will see the answer), or DM me."
)
NOTES = PrivateNotes(PRIVATE_SENT, PRIVATE_NOT_SENT)
ANSWERABLE_TYPES = (discord.MessageType.default, discord.MessageType.reply)


class DiscordAdapter:
    """Runs moodmate on Discord with discord.py 2.x (all shards, or those in DISCORD_SHARD_IDS)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.policy = AccessPolicy(
            settings.discord_allowed_guild_ids, settings.discord_allowed_channel_ids, self._is_member
        )
        self.free_channel_ids = settings.discord_free_channel_ids
        self._client: MoodmateClient | None = None
        self._connection: asyncio.Task[None] | None = None
        self._endpoints: EndpointOverride | None = None
        self._inflight: set[asyncio.Task[object]] = set()
        self._sent_ids: OrderedDict[int, None] = OrderedDict()
        self._stopping = False
        self._lost = asyncio.Event()
        self._lost_because: MoodmateError = PlatformError("The Discord gateway connection ended.")
        #: Progressive display (``settings.stream_replies``): when a reply starts showing, and how often.
        self.stream_delay = STREAM_DELAY_SECONDS
        self.edit_interval = EDIT_INTERVAL_SECONDS
        self._delivery = Delivery(engine, cleanup_timeout=STOP_GRACE_SECONDS)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in, sync slash commands, connect the gateway; returns once READY arrived."""
        token = self.settings.discord_token
        if not token:
            raise ConfigurationError(MISSING_TOKEN)
        shards = shards_from_settings(self.settings)
        self._stopping = False
        self._lost.clear()
        self._endpoints = EndpointOverride(
            self.settings.discord_api_base_url, self.settings.discord_gateway_url
        )
        self._endpoints.apply()
        client = build_client(self, shards)
        self._client = client
        try:
            await self._login(client, token)
            if self._endpoints.api_base is not None and self._endpoints.gateway is None:
                self._endpoints.use_gateway(await self._discover_gateway(client))
            self._connection = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
            await self._wait_until_ready(client, self._connection)
        except BaseException:
            await self._shutdown_client()
            raise
        self._connection.add_done_callback(self._on_connection_end)
        logger.info("Discord: connected as %s (id %s)", client.user, client.user.id if client.user else "?")
        if shards is not None:
            logger.info("Discord: running shards %s of %d", ",".join(map(str, shards.ids)), shards.count)

    async def stop(self) -> None:
        """Finish (briefly) the messages being answered, then close the connection cleanly."""
        if self._client is None:
            return
        self._stopping = True
        pending = {task for task in self._inflight if not task.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=STOP_GRACE_SECONDS)
        await self._shutdown_client()
        await self._delivery.stop()
        logger.info("Discord: disconnected")

    async def _login(self, client: MoodmateClient, token: str) -> None:
        try:
            await client.login(token)
        except discord.LoginFailure:
            raise ConfigurationError(BAD_TOKEN) from None
        except Exception as error:  # HTTP, connection, or an answer discord.py could not parse
            raise PlatformError(
                f"Could not log in to Discord ({type(error).__name__}); "
                "check the network and Discord's status."
            ) from error

    async def _discover_gateway(self, client: MoodmateClient) -> str:
        """``GET /gateway/bot`` on the configured API, for a gateway address that was not configured."""
        try:
            _, url, _ = await client.http.get_bot_gateway()
        except Exception as error:
            raise PlatformError(
                "DISCORD_API_BASE_URL is set but its GET /gateway/bot failed; set DISCORD_GATEWAY_URL too."
            ) from error
        return url

    async def _wait_until_ready(self, client: MoodmateClient, connection: asyncio.Task[None]) -> None:
        ready = asyncio.create_task(client.gateway_ready.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, connection}, timeout=READY_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if connection in done:
            raise self._connection_failure(connection.exception())
        if ready not in done:
            raise PlatformError(
                f"Discord's gateway sent no READY within {READY_TIMEOUT_SECONDS:.0f} seconds."
            )

    @staticmethod
    def _connection_failure(error: BaseException | None) -> MoodmateError:
        if isinstance(error, discord.PrivilegedIntentsRequired):
            return ConfigurationError(INTENT_REFUSED)
        if isinstance(error, discord.ConnectionClosed) and error.code == 4014:
            return ConfigurationError(INTENT_REFUSED)
        if isinstance(error, discord.ConnectionClosed) and error.code == 4004:
            return ConfigurationError(BAD_TOKEN)
        if error is None:
            return PlatformError("The Discord gateway connection ended before READY.")
        return platform_error(error, "connect to the gateway")

    def _on_connection_end(self, task: asyncio.Task[None]) -> None:
        """discord.py reconnects by itself; its connection ends only when it gives up (e.g. 4004)."""
        if self._stopping or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._lost_because = self._connection_failure(error)
            known = isinstance(self._lost_because, ConfigurationError)  # a token or intent refused
            logger.error(
                "Discord connection lost for good: %s", self._lost_because, exc_info=None if known else error
            )
        self._lost.set()

    @property
    def client(self) -> MoodmateClient:
        """The running discord.py client."""
        if self._client is not None:
            return self._client
        raise PlatformError("The Discord adapter is not running.")

    async def wait_lost(self) -> MoodmateError:
        """Return once discord.py has given up on the gateway (it reconnects by itself otherwise)."""
        await self._lost.wait()
        return self._lost_because

    async def _shutdown_client(self) -> None:
        client, self._client = self._client, None
        connection, self._connection = self._connection, None
        try:
            if client is not None:
                await client.close()
            if connection is not None:
                try:
                    await asyncio.wait_for(connection, timeout=STOP_GRACE_SECONDS)
                except (TimeoutError, asyncio.CancelledError):
                    connection.cancel()
                except Exception as error:
                    logger.debug("Discord connection ended with %s", type(error).__name__)
        finally:
            if self._endpoints is not None:
                self._endpoints.restore()
                self._endpoints = None

    async def on_setup(self, client: MoodmateClient) -> None:
        """After login, before the gateway: sync the slash commands."""
        try:
            synced = await client.tree.sync()
        except Exception as error:
            # Chat keeps working without fresh commands, so this is not fatal.
            logger.error("Could not sync Discord slash commands: %s", platform_error(error, "sync commands"))
            return
        logger.info("Discord: synced %d slash commands", len(synced))

    @contextlib.asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        """Marks the current event handler as in flight, so stop() can let it finish."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._inflight.discard(task)

    # --- messages ----------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """A message in any channel moodmate can see."""
        if self._stopping or self._client is None:
            return
        try:
            incoming = await self._incoming(message, self._client)
            if incoming is None:
                return
            async with self._tracked():
                await self._answer_message(message, incoming)
        except Exception:
            logger.exception("Unexpected error handling a Discord message")

    async def _incoming(self, message: discord.Message, client: MoodmateClient) -> IncomingMessage | None:
        """The message for the engine, or None when it is not moodmate's to answer."""
        me = client.user
        if me is None or message.author.bot or message.webhook_id is not None:
            return None
        if message.type not in ANSWERABLE_TYPES:
            return None
        is_dm = isinstance(message.channel, discord.DMChannel)
        guild_id = (
            message.guild.id if message.guild is not None else getattr(message.channel, "guild_id", None)
        )
        if not is_dm and guild_id is None:
            return None  # a group DM or an unknown kind of channel
        if not is_dm and not await self._addressed(message, me.id):
            return None
        if is_dm:
            allowed = await self.policy.allows_dm(message.author.id, message.channel.id)
        else:
            assert guild_id is not None  # a server's channel: other kinds were left above
            allowed = self.policy.allows_guild_channel(
                guild_id, message.channel.id, _parent_id(message.channel)
            )
        if not allowed:
            logger.debug("Ignoring a Discord message outside the allowlists (channel %s)", message.channel.id)
            return None
        text = readable_mentions(
            strip_bot_mentions(message.content, me.id, _bot_role_ids(message, me.id)), message
        )
        return IncomingMessage(
            platform=Platform.DISCORD,
            chat_id=str(message.channel.id),
            user_id=str(message.author.id),
            display_name=message.author.display_name,
            text=text,
            addressed_to_bot=True,
            chat_is_private=is_dm,
            message_id=str(message.id),
        )

    async def _addressed(self, message: discord.Message, bot_id: int) -> bool:
        """Mentioned, replied to, or in a free-conversation channel (``@everyone`` does not count)."""
        mentioned = any(user.id == bot_id for user in message.mentions) or bot_id in message.raw_mentions
        if mentioned or _bot_role_ids(message, bot_id):
            return True
        channels = {str(message.channel.id)}
        parent = _parent_id(message.channel)
        if parent is not None:
            channels.add(str(parent))
        if channels & self.free_channel_ids:
            return True
        return await self._replies_to_bot(message, bot_id)

    async def _replies_to_bot(self, message: discord.Message, bot_id: int) -> bool:
        reference = message.reference
        if reference is None or reference.message_id is None or reference.channel_id != message.channel.id:
            return False
        if reference.type is not discord.MessageReferenceType.reply:
            return False  # a forward is not a reply
        if reference.message_id in self._sent_ids:
            return True
        resolved = reference.resolved
        if isinstance(resolved, discord.Message):
            return resolved.author.id == bot_id
        if resolved is not None:
            return False  # the referenced message was deleted
        # Discord did not include the referenced message: look it up.
        try:
            original = await message.channel.fetch_message(reference.message_id)
        except (discord.DiscordException, aiohttp.ClientError, OSError) as error:
            logger.debug("Could not fetch a referenced message (%s)", type(error).__name__)
            return False
        return original.author.id == bot_id

    def _remember_sent(self, sent: discord.Message | None) -> None:
        """Keep the ids of recent messages moodmate sent, to recognise replies to them."""
        if sent is None:
            return
        self._sent_ids[sent.id] = None
        while len(self._sent_ids) > SENT_IDS_KEPT:
            self._sent_ids.popitem(last=False)

    async def _answer_message(self, message: discord.Message, incoming: IncomingMessage) -> None:
        await self._delivery.answer(incoming, self._channel_port(message.channel, incoming, message))

    def _channel_port(
        self,
        channel: discord.abc.Messageable,
        incoming: IncomingMessage,
        message: discord.Message | None = None,
        *,
        heading: str = "",
    ) -> ChannelPort:
        """The port answering ``incoming`` in ``channel`` (as a reply to it, in servers)."""
        in_server = not incoming.chat_is_private
        reference = None
        if in_server and incoming.message_id and incoming.message_id.isdigit():
            # As a reply to the message it answers (sent plainly if that message is gone).
            reference = discord.MessageReference(
                message_id=int(incoming.message_id),
                channel_id=int(incoming.chat_id),
                fail_if_not_exists=False,
            )
        stream_delay = self.stream_delay if self.settings.stream_replies else None
        limits = PortLimits(TYPING_INTERVAL_SECONDS, self.edit_interval, stream_delay)
        return ChannelPort(
            channel,
            Place(("channel", int(incoming.chat_id)), not in_server, limits, NOTES),
            reference=reference,
            open_dm=message.author.create_dm if message is not None else None,
            on_sent=self._remember_sent,
            heading=heading,
        )

    async def admits(self, message: IncomingMessage) -> bool:
        """Whether the allowlists admit ``message`` now (checked again at recovery). A server channel
        this process cannot see is refused when any allowlist is set."""
        try:
            user_id, channel_id = int(message.user_id), int(message.chat_id)
        except ValueError:
            return False
        if message.chat_is_private:
            return await self.policy.allows_dm(user_id, channel_id)
        channel = self._client.get_channel(channel_id) if self._client is not None else None
        guild = getattr(channel, "guild", None)
        if channel is None or guild is None:
            return not self.policy.restricted
        return self.policy.allows_guild_channel(guild.id, channel_id, _parent_id(channel))

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        """Send ``reply`` to the channel ``message`` came from (answers recovered after a restart)."""
        client = self.client
        known = client.get_channel(int(message.chat_id))
        channel = (
            known
            if isinstance(known, discord.abc.Messageable)
            else client.get_partial_messageable(int(message.chat_id))
        )
        heading = "" if message.chat_is_private else f"*{escape_markdown(message.display_name)}:*\n"
        port = self._channel_port(channel, message, heading=heading)
        await self._delivery.deliver(port, reply)

    # --- slash commands and buttons --------------------------------------------------------------

    async def on_slash_command(self, interaction: discord.Interaction, text: str) -> None:
        """A slash command: defer at once, run the core command, answer with follow-ups."""
        async with self._tracked():
            # Answers are about the person's own data: only a DM with moodmate may show them openly.
            ephemeral = not _in_bot_dm(interaction)
            try:
                # First: the allowlist check may ask Discord (membership), and Discord allows 3 s.
                await self._acknowledge(interaction, ephemeral=ephemeral, thinking=True)
                if not await self._interaction_allowed(interaction):
                    await self._refuse(interaction)
                    return
                replies = await self._run_for_interaction(interaction, text)
                port = InteractionPort(interaction, ephemeral=ephemeral, notes=NOTES)
                if not replies:
                    await port.delete(ORIGINAL)
                for reply in replies:
                    await self._delivery.deliver(port, reply)
            except Exception:
                logger.exception("Could not answer a Discord slash command")
                await self._apologise(interaction, ephemeral=ephemeral)

    async def on_action(self, interaction: discord.Interaction, command: str) -> None:
        """A button press: the same as the presser sending ``command``; the message shows the result."""
        async with self._tracked():
            ephemeral = bool(interaction.message is not None and interaction.message.flags.ephemeral)
            try:
                await self._acknowledge(interaction, ephemeral=ephemeral, thinking=False)
                if not await self._interaction_allowed(interaction):
                    await self._refuse(interaction)
                    return
                replies = await self._run_for_interaction(interaction, command)
                port = InteractionPort(interaction, ephemeral=ephemeral, notes=NOTES)
                for index, reply in enumerate(replies):  # the first one replaces the pressed message
                    await self._delivery.deliver(port, reply, replacing=ORIGINAL if index == 0 else None)
            except Exception:
                logger.exception("Could not answer a Discord button press")
                await self._apologise(interaction, ephemeral=ephemeral)

    @staticmethod
    async def _acknowledge(interaction: discord.Interaction, *, ephemeral: bool, thinking: bool) -> None:
        """Defer within Discord's three seconds: "thinking…" for commands, a silent ack for buttons."""
        try:
            # One attempt only: an interaction can be acknowledged once.
            await call_discord(
                "acknowledge an interaction",
                lambda: interaction.response.defer(ephemeral=ephemeral, thinking=thinking),
                attempts=1,
            )
        except (KeyError, TypeError):
            # The acknowledgement went through but its response body (with_response=1) was not the
            # interaction-callback object discord.py parses; the follow-ups work all the same.
            if not interaction.response.is_done():
                raise
            logger.debug("Discord acknowledged an interaction without a callback response body")

    @staticmethod
    async def _refuse(interaction: discord.Interaction) -> None:
        """Tell (only) the person that moodmate is not enabled here; the interaction is acknowledged."""
        await call_discord(
            "answer an interaction",
            lambda: interaction.followup.send(NOT_HERE, ephemeral=True, allowed_mentions=NO_MENTIONS),
        )

    @staticmethod
    async def _apologise(interaction: discord.Interaction, *, ephemeral: bool) -> None:
        """Best effort: never leave someone looking at "thinking…" forever."""
        try:
            if interaction.response.is_done():
                await interaction.followup.send(
                    MoodmateError.user_message, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS
                )
            else:
                await interaction.response.send_message(
                    MoodmateError.user_message, ephemeral=True, allowed_mentions=NO_MENTIONS
                )
        except Exception as error:
            logger.warning("Could not apologise on Discord either (%s)", type(error).__name__)

    async def _interaction_allowed(self, interaction: discord.Interaction) -> bool:
        channel_id = interaction.channel_id or 0
        if interaction.guild_id is None:
            return await self.policy.allows_dm(interaction.user.id, channel_id)
        return self.policy.allows_guild_channel(
            interaction.guild_id, channel_id, _parent_id(interaction.channel)
        )

    async def _run_for_interaction(self, interaction: discord.Interaction, text: str) -> list[Reply]:
        incoming = IncomingMessage(
            platform=Platform.DISCORD,
            chat_id=str(interaction.channel_id),
            user_id=str(interaction.user.id),
            display_name=interaction.user.display_name,
            text=text,
            addressed_to_bot=True,
            chat_is_private=_in_bot_dm(interaction),
            message_id=str(interaction.id),
        )
        try:
            return await self.engine.handle(incoming)
        except Exception:
            logger.exception("The engine failed on a Discord interaction")
            return [Reply(MoodmateError.user_message, kind=ReplyKind.ERROR)]

    # --- helpers -------------------------------------------------------------------------------

    async def _is_member(self, guild_id: int, user_id: int) -> bool:
        client = self._client
        guild = client.get_guild(guild_id) if client is not None else None
        if guild is None:
            return False
        if guild.get_member(user_id) is not None:
            return True
        try:
            await guild.fetch_member(user_id)
        except discord.NotFound:
            return False
        except (discord.DiscordException, aiohttp.ClientError, OSError) as error:
            raise platform_error(error, "check a server membership") from error
        return True


def _in_bot_dm(interaction: discord.Interaction) -> bool:
    """Whether the interaction happened in a DM between the person and moodmate."""
    if interaction.guild_id is not None:
        return False
    return interaction.context.dm_channel or isinstance(interaction.channel, discord.DMChannel)


def _parent_id(channel: object) -> int | None:
    parent = getattr(channel, "parent_id", None)
    return parent if isinstance(parent, int) else None


def _bot_role_ids(message: discord.Message, bot_id: int) -> frozenset[int]:
    """The mentioned roles that are moodmate's own managed role (what "@moodmate" may resolve to)."""
    return frozenset(
        role.id for role in message.role_mentions if role.tags is not None and role.tags.bot_id == bot_id
    )
