"""Sending to Discord: message payloads, retries, and discord.py errors turned into PlatformError.

Every send passes ``allowed_mentions=AllowedMentions.none()`` (the client default is the same),
so model output such as ``@everyone`` or ``<@&role>`` is shown as text and never pings anyone.
discord.py's own 429 handling stays on (it waits ``retry_after`` and retries up to five times);
:func:`call_discord` adds a few more attempts on top, so a busy rate limit never drops a reply.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
import discord

from bot.errors import PlatformError
from bot.types import Action, Attachment

logger = logging.getLogger(__name__)

T = TypeVar("T")

NO_MENTIONS = discord.AllowedMentions.none()
ATTEMPTS = 4
MAX_BUTTONS = 25


class DiscordForbiddenError(PlatformError):
    """Discord refused with 403: DMs closed (50007), missing permissions (50013), ...; the same
    channel will refuse an apology too."""


def platform_error(error: BaseException, action: str) -> PlatformError:
    """One PlatformError for any discord.py or connection failure while doing ``action``."""
    if isinstance(error, discord.Forbidden):
        return DiscordForbiddenError(f"Discord refused to {action} (HTTP 403, code {error.code}).")
    if isinstance(error, discord.HTTPException):
        return PlatformError(f"Discord refused to {action} (HTTP {error.status}, code {error.code}).")
    return PlatformError(f"Could not {action} on Discord ({type(error).__name__}).")


def _retry_delay(error: BaseException, attempt: int) -> float | None:
    """Seconds to wait before retrying after ``error``, or None when retrying cannot help."""
    if isinstance(error, discord.RateLimited):
        return error.retry_after
    if isinstance(error, discord.HTTPException):
        if error.status == 429:
            header = error.response.headers.get("Retry-After") if error.response is not None else None
            try:
                return float(header) if header else 1.0 + attempt
            except ValueError:
                return 1.0 + attempt
        if error.status >= 500:
            return 1.0 + 2 * attempt
        return None
    if isinstance(error, (aiohttp.ClientError, OSError, asyncio.TimeoutError)):
        return 1.0 + 2 * attempt
    return None


async def call_discord(action: str, operation: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """Run ``operation`` (a fresh request each call), retrying rate limits and server errors."""
    for attempt in range(attempts):
        try:
            return await operation()
        except (TimeoutError, discord.DiscordException, aiohttp.ClientError, OSError) as error:
            delay = _retry_delay(error, attempt)
            if delay is None or attempt == attempts - 1:
                raise platform_error(error, action) from error
            logger.warning(
                "Could not %s on Discord (%s); retrying in %.1fs", action, type(error).__name__, delay
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def files_for(attachments: Sequence[Attachment]) -> list[discord.File]:
    """Fresh ``discord.File`` objects (they are consumed by each request attempt)."""
    return [discord.File(io.BytesIO(item.content), filename=item.filename) for item in attachments]


class ActionButtons(discord.ui.View):
    """A reply's actions as buttons whose ``custom_id`` is the action's command.

    Render-only: presses reach the adapter through ``on_interaction`` (so the buttons keep working
    after a restart), hence the view is never kept in discord.py's view store.
    """

    def __init__(self, actions: Sequence[Action]) -> None:
        super().__init__(timeout=None)
        for index, action in enumerate(actions[:MAX_BUTTONS]):
            style = discord.ButtonStyle.primary if index == 0 else discord.ButtonStyle.secondary
            self.add_item(
                discord.ui.Button(label=action.label[:80], custom_id=action.command[:100], style=style)
            )

    def is_dispatchable(self) -> bool:
        return False
