"""One "typing…" loop per place, shared by every reply being written there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable

from bot.delivery.port import ReplyPort

logger = logging.getLogger(__name__)


class TypingLoops:
    """Keeps "typing…" on in a place while at least one reply for it is being prepared.

    Each loop renews the indicator every ``place.limits.typing_interval`` seconds, and at once after
    :meth:`refresh` (platforms hide it when the bot posts). Cosmetic: failures are only logged.
    """

    def __init__(self) -> None:
        self._users: dict[Hashable, int] = {}
        self._again: dict[Hashable, asyncio.Event] = {}
        self.tasks: dict[Hashable, asyncio.Task[None]] = {}

    @contextlib.asynccontextmanager
    async def showing(self, port: ReplyPort) -> AsyncIterator[None]:
        """Keep "typing…" visible at ``port.place.key`` while the block runs."""
        place = port.place.key
        self._users[place] = self._users.get(place, 0) + 1
        if place not in self.tasks:
            self._again[place] = asyncio.Event()
            self.tasks[place] = asyncio.create_task(self._loop(port, self._again[place]), name="typing")
        try:
            yield
        finally:
            left = self._users.get(place, 0) - 1
            if left > 0:
                self._users[place] = left
            else:
                self._users.pop(place, None)
                self._again.pop(place, None)
                task = self.tasks.pop(place, None)
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def refresh(self, place: Hashable) -> None:
        """Show "typing…" again now at ``place`` (if a loop runs there)."""
        again = self._again.get(place)
        if again is not None:
            again.set()

    @staticmethod
    async def _loop(port: ReplyPort, again: asyncio.Event) -> None:
        while True:
            again.clear()
            try:
                await port.typing()
            except Exception as error:  # cosmetic: never let it end the reply it decorates
                logger.debug("Could not show typing: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(again.wait(), port.place.limits.typing_interval)

    async def stop(self) -> None:
        """End every loop (at shutdown)."""
        tasks = list(self.tasks.values())
        self.tasks.clear()
        self._users.clear()
        self._again.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
