"""What every chat-platform adapter offers the runner."""

from __future__ import annotations

from typing import Protocol

from bot.errors import MoodmateError
from bot.types import IncomingMessage, Reply


class PlatformAdapter(Protocol):
    """Receives platform messages, hands them to the engine, and sends the replies back."""

    async def start(self) -> None:
        """Connect and start receiving; returns once running."""
        ...

    async def stop(self) -> None:
        """Stop receiving and disconnect cleanly."""
        ...

    async def admits(self, message: IncomingMessage) -> bool:
        """Whether the platform's allowlists admit ``message``'s sender now (asked at recovery)."""
        ...

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        """Send ``reply`` to the chat ``message`` came from (used to answer messages after a restart)."""
        ...

    async def wait_lost(self) -> MoodmateError:
        """Return once the platform is lost for good while running (e.g. the token was revoked:
        the SDK stopped retrying), with why; never returns while it works."""
        ...
