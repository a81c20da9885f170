"""moodmate's slash commands: each one becomes the core's text command (``/mood 30d``, ...)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord
from discord import app_commands

from adapters.discord.sending import NO_MENTIONS

logger = logging.getLogger(__name__)

#: Runs the core command ``text`` for the person behind ``interaction``.
RunCommand = Callable[[discord.Interaction, str], Awaitable[None]]

PERIODS = [
    app_commands.Choice(name="last 7 days", value="7d"),
    app_commands.Choice(name="last 30 days", value="30d"),
    app_commands.Choice(name="last 90 days", value="90d"),
    app_commands.Choice(name="everything", value="all"),
]
EXPORT_FORMATS = [
    app_commands.Choice(name="CSV and JSON", value="csv json"),
    app_commands.Choice(name="CSV", value="csv"),
    app_commands.Choice(name="JSON", value="json"),
]
#: Errors of a command the client still shows but moodmate no longer has (or no longer in that form:
#: a removed command, an option or choice that changed since the client cached the commands).
STALE_COMMAND_ERRORS = (
    app_commands.CommandNotFound,
    app_commands.CommandSignatureMismatch,
    app_commands.TransformerError,
)
UNKNOWN_COMMAND = (
    "I don't know that command in this form (Discord may still be showing an older version of it). Try /help."
)
ON_OFF = [app_commands.Choice(name="on", value="on"), app_commands.Choice(name="off", value="off")]


def _with(command: str, argument: str | None) -> str:
    argument = (argument or "").strip()
    return f"{command} {argument}" if argument else command


def build_command_tree(client: discord.Client, run: RunCommand) -> app_commands.CommandTree:
    """The command tree (``client.tree``) with every core command; synced at start."""
    tree: app_commands.CommandTree = app_commands.CommandTree(client)

    @tree.command(name="mood", description="Your mood summary and chart")
    @app_commands.describe(period="Which days to look at (default: last 7 days)")
    @app_commands.choices(period=PERIODS)
    async def mood(interaction: discord.Interaction, period: app_commands.Choice[str] | None = None) -> None:
        await run(interaction, _with("/mood", period.value if period else None))

    @tree.command(name="reset", description="Forget our conversation in this channel (keeps your mood log)")
    async def reset(interaction: discord.Interaction) -> None:
        await run(interaction, "/reset")

    @tree.command(name="forget", description="Delete everything moodmate stores about you")
    async def forget(interaction: discord.Interaction) -> None:
        await run(interaction, "/forget")

    @tree.command(name="export", description="Download your messages and mood log")
    @app_commands.describe(format="File format (default: both)")
    @app_commands.choices(format=EXPORT_FORMATS)
    async def export(
        interaction: discord.Interaction, format: app_commands.Choice[str] | None = None
    ) -> None:
        await run(interaction, _with("/export", format.value if format else None))

    @tree.command(name="help", description="What moodmate can do")
    async def help_(interaction: discord.Interaction) -> None:
        await run(interaction, "/help")

    @tree.command(name="start", description="What moodmate does and what it stores")
    async def start(interaction: discord.Interaction) -> None:
        await run(interaction, "/start")

    @tree.command(name="timezone", description="Show or set your timezone for mood days")
    @app_commands.describe(zone="An IANA timezone such as Europe/Berlin (leave empty to see yours)")
    async def timezone(interaction: discord.Interaction, zone: str | None = None) -> None:
        await run(interaction, _with("/timezone", zone))

    @tree.command(name="moodlog", description="Turn mood logging on or off")
    @app_commands.describe(state="on or off (leave empty to see the current setting)")
    @app_commands.choices(state=ON_OFF)
    async def moodlog(
        interaction: discord.Interaction, state: app_commands.Choice[str] | None = None
    ) -> None:
        await run(interaction, _with("/moodlog", state.value if state else None))

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, STALE_COMMAND_ERRORS):
            logger.warning("A slash command moodmate does not have in that form: %s", type(error).__name__)
        else:
            logger.error("Slash command failed: %s", type(error).__name__, exc_info=error)
        if interaction.response.is_done():
            return
        try:  # never leave the person with "The application did not respond"
            await interaction.response.send_message(
                UNKNOWN_COMMAND, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        except (discord.DiscordException, OSError) as failure:
            logger.warning("Could not answer a failed slash command (%s)", type(failure).__name__)

    return tree
