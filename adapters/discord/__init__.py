"""moodmate on Discord, with discord.py 2.x (see :mod:`adapters.discord.adapter`)."""

from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
