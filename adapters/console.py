"""The console adapter: ``moodmate chat``, the same engine path as the platforms, for a local user.

Interactive on a terminal; with piped input it answers each line and exits at end of input.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TextIO

from bot.engine import Engine, ReplySink
from bot.presentation import mood_tag
from bot.types import IncomingMessage, Platform, Reply

logger = logging.getLogger(__name__)

PROMPT = "you> "

#: Printed once when a message arrives before the engine (its model) is ready.
STILL_LOADING = "(the language model is still loading; your message is answered as soon as it is ready)"


class _ConsoleSink(ReplySink):
    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def queued(self, position: int) -> None:
        print(f"(waiting: {position} ahead of you)", file=self._out, flush=True)


class ConsoleAdapter:
    """Reads lines from ``stdin`` and prints the engine's replies to ``stdout``.

    ``engine`` may still be on its way (an awaitable, e.g. the task loading the model): the prompt
    shows at once, and the first message waits for it, saying so once.
    """

    def __init__(
        self,
        engine: Engine | Awaitable[Engine],
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        user_id: str | None = None,
        export_dir: Path | None = None,
    ) -> None:
        self._engine: Engine | None = engine if isinstance(engine, Engine) else None
        self._pending_engine = None if isinstance(engine, Engine) else engine
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self.user_id = user_id or _local_user()
        self.export_dir = export_dir or Path.cwd() / "moodmate-files"
        self._interactive = self._in.isatty()

    @property
    def engine(self) -> Engine:
        """The engine (once it is ready)."""
        if self._engine is None:
            raise RuntimeError("the engine is not ready yet")
        return self._engine

    async def _ready_engine(self) -> Engine:
        if self._engine is None:
            assert self._pending_engine is not None
            pending = asyncio.ensure_future(self._pending_engine)
            if not pending.done():
                print(STILL_LOADING, file=self._out, flush=True)
            self._engine = await pending
        return self._engine

    def _message(self, text: str) -> IncomingMessage:
        return IncomingMessage(
            platform=Platform.CONSOLE,
            chat_id=f"console:{self.user_id}",
            user_id=self.user_id,
            display_name=self.user_id,
            text=text,
            addressed_to_bot=True,
            chat_is_private=True,
        )

    async def run(self) -> None:
        """Answer lines until end of input (or ``/quit`` on a terminal)."""
        if self._interactive:
            print("moodmate is listening. /help lists commands; Ctrl-D or /quit ends.", file=self._out)
        while True:
            if self._interactive:
                print(PROMPT, end="", file=self._out, flush=True)
            line = await asyncio.to_thread(self._in.readline)
            if not line:
                break
            text = line.rstrip("\n")
            if self._interactive and text.strip() in ("/quit", "/exit"):
                break
            if not text.strip() and not self._interactive:
                continue
            engine = await self._ready_engine()
            for reply in await engine.handle(self._message(text), _ConsoleSink(self._out)):
                await self.deliver(self._message(text), reply)
                await engine.delivered(reply)

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        """Print a reply; attachments are saved as files and their paths printed."""
        text = f"{mood_tag(reply.mood)} {reply.text}" if reply.mood is not None else reply.text
        print(text, file=self._out, flush=True)
        for action in reply.actions:
            print(f"  → {action.label}: send {action.command}", file=self._out, flush=True)
        for attachment in reply.attachments:
            path = self._save(attachment.filename, attachment.content)
            print(f"  (saved {path})", file=self._out, flush=True)

    def _save(self, filename: str, content: bytes) -> Path:
        self.export_dir.mkdir(parents=True, exist_ok=True)
        path = self.export_dir / Path(filename).name
        path.write_bytes(content)
        return path


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"
