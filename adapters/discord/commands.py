"""moodmate's slash commands, built from the core's command table (:data:`bot.commands.COMMANDS`):
each one runs the core's text command (``/mood 30d``, ...)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from adapters.discord.sending import NO_MENTIONS
from bot.commands import COMMANDS, CommandSpec

logger = logging.getLogger(__name__)

#: Runs the core command ``text`` for the person behind ``interaction``.
RunCommand = Callable[[discord.Interaction, str], Awaitable[None]]

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


def _with(command: str, argument: str | None) -> str:
    argument = (argument or "").strip()
    return f"{command} {argument}" if argument else command


def slash_command(spec: CommandSpec, run: RunCommand) -> app_commands.Command[Any, Any, None]:
    """The slash command for ``spec``: its argument (if any) becomes one optional option."""
    command = f"/{spec.name}"
    argument = spec.argument
    if argument is None:

        async def plain(interaction: discord.Interaction) -> None:
            await run(interaction, command)

        return app_commands.Command(name=spec.name, description=spec.description, callback=plain)
    callback: Callable[..., Awaitable[None]]
    if argument.choices:

        async def chosen(
            interaction: discord.Interaction, value: app_commands.Choice[str] | None = None
        ) -> None:
            await run(interaction, _with(command, value.value if value else None))

        options = [app_commands.Choice(name=label, value=value) for label, value in argument.choices]
        callback = app_commands.choices(value=options)(chosen)
    else:

        async def typed(interaction: discord.Interaction, value: str | None = None) -> None:
            await run(interaction, _with(command, value))

        callback = typed
    callback = app_commands.rename(value=argument.name)(
        app_commands.describe(value=argument.description)(callback)
    )
    return app_commands.Command(name=spec.name, description=spec.description, callback=callback)


def build_command_tree(client: discord.Client, run: RunCommand) -> app_commands.CommandTree:
    """The command tree (``client.tree``) with every core command; synced at start."""
    tree: app_commands.CommandTree = app_commands.CommandTree(client)

    for spec in COMMANDS:
        tree.add_command(slash_command(spec, run))

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
