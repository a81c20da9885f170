"""One retry-with-backoff helper for every platform request.

It retries only :class:`~bot.delivery.port.TransientError`: each port raises that for the failures
its SDK does not already retry (discord.py waits out 429s and repeats 500/502/504/524 and
connection resets up to five times; python-telegram-bot's ``AIORateLimiter`` waits out
``RetryAfter``, but neither repeats a request lost on the network), so nothing is retried twice over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bot.delivery.port import TransientError
from bot.delivery.timing import ATTEMPTS, BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def with_backoff(
    request: Callable[[], Awaitable[T]],
    *,
    attempts: int = ATTEMPTS,
    first_delay: float = BACKOFF_FIRST_SECONDS,
    max_delay: float = BACKOFF_MAX_SECONDS,
) -> T:
    """Await ``request()`` (a fresh request each call), again after a ``TransientError``.

    ``attempts`` tries in all; between them the error's ``retry_after`` when it names one, else
    ``first_delay`` seconds, doubling each time up to ``max_delay``. Retries are logged at WARNING
    with the error's text, which ports keep free of message texts and tokens.
    """
    attempts = max(1, attempts)
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await request()
        except TransientError as error:
            if attempt >= attempts:
                if attempts > 1:
                    logger.warning("A request gave up after %d tries: %s", attempts, error)
                raise
            wait = error.retry_after if error.retry_after is not None else delay
            logger.warning("%s; try %d of %d in %.1f s", error, attempt + 1, attempts, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
