"""What every chat-platform adapter offers the runner."""

from __future__ import annotations

from typing import Protocol

from bot.types import IncomingMessage, Reply


class PlatformAdapter(Protocol):
    """Receives platform messages, hands them to the engine, and sends the replies back."""

    async def start(self) -> None:
        """Connect and start receiving; returns once running."""
        ...

    async def stop(self) -> None:
        """Stop receiving and disconnect cleanly."""
        ...

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        """Send ``reply`` to the chat ``message`` came from (used to answer messages after a restart)."""
        ...
