"""Sending to Discord: message payloads, retries, and discord.py errors turned into PlatformError.

Every send passes ``allowed_mentions=AllowedMentions.none()`` (the client default is the same),
so model output such as ``@everyone`` or ``<@&role>`` is shown as text and never pings anyone.
discord.py retries by itself: it waits out every 429 (``retry_after``) and repeats 500, 502, 504,
524 and connection resets, five tries in all. :func:`call_discord` leaves those alone and retries,
with the core's backoff, only what discord.py does not: other network failures and timeouts (a
send whose answer was lost, repeated with the same nonce), a 503, a ``RateLimited`` (discord.py
refused to wait) and a rate limit that outlasted its five tries, so a busy limit never drops a reply.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
import discord

from bot.delivery import RefusedError, TransientError, with_backoff
from bot.delivery.timing import ATTEMPTS
from bot.errors import PlatformError
from bot.types import Action, Attachment

T = TypeVar("T")

NO_MENTIONS = discord.AllowedMentions.none()
MAX_BUTTONS = 25
#: The statuses discord.py repeats itself (five tries): not retried again on top.
SDK_RETRIED_STATUSES = frozenset({500, 502, 504, 524})


class DiscordForbiddenError(RefusedError):
    """Discord refused with 403: DMs closed (50007), missing permissions (50013), ...; the same
    channel will refuse an apology too."""


def platform_error(error: BaseException, action: str) -> PlatformError:
    """One PlatformError for any discord.py or connection failure while doing ``action``: a
    ``RefusedError`` for a 403, a ``TransientError`` for what is worth another try."""
    if isinstance(error, discord.Forbidden):
        return DiscordForbiddenError(f"Discord refused to {action} (HTTP 403, code {error.code}).")
    retry_after = _retry_after(error)
    if isinstance(error, discord.HTTPException):
        message = f"Discord refused to {action} (HTTP {error.status}, code {error.code})."
    else:
        message = f"Could not {action} on Discord ({type(error).__name__})."
    if retry_after is not None or _transient(error):
        return TransientError(message, retry_after=retry_after)
    return PlatformError(message)


def _retry_after(error: BaseException) -> float | None:
    """The wait Discord asked for, for a rate limit discord.py did not (or no longer) wait out."""
    if isinstance(error, discord.RateLimited):
        return error.retry_after
    if isinstance(error, discord.HTTPException) and error.status == 429:
        header = error.response.headers.get("Retry-After") if error.response is not None else None
        try:
            return float(header) if header else None
        except ValueError:
            return None
    return None


def _transient(error: BaseException) -> bool:
    if isinstance(error, discord.HTTPException):
        return error.status == 429 or (error.status >= 500 and error.status not in SDK_RETRIED_STATUSES)
    return isinstance(error, (aiohttp.ClientError, OSError, asyncio.TimeoutError))


async def call_discord(action: str, operation: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """Run ``operation`` (a fresh request each call), retrying what discord.py does not retry."""

    async def once() -> T:
        try:
            return await operation()
        except (TimeoutError, discord.DiscordException, aiohttp.ClientError, OSError) as error:
            raise platform_error(error, action) from error

    return await with_backoff(once, attempts=attempts)


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
