"""``moodmate run`` as a real process: real settings, a real (tiny) transformers model, the real
Telegram startup path against the fake Bot API, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

from tests.fakes.telegram_server import FakeTelegramServer
from tests.tiny_model import build_tiny_model


async def test_moodmate_run_answers_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "tiny-model")
    database = tmp_path / "moodmate.db"
    async with FakeTelegramServer() as server:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "HF_HUB_OFFLINE": "1",
            "TELEGRAM_TOKEN": server.token,
            "TELEGRAM_API_BASE_URL": server.root_url,
            "MOODMATE_MODEL": str(model_dir),
            "MOODMATE_MAX_REPLY_TOKENS": "8",
            "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "LOG_LEVEL": "INFO",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "adapters.cli",
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await server.wait_for("getUpdates", timeout=90)
            user = server.user(4242, "Ada")
            server.send_text(server.private_chat(user), user, "I am happy today, thanks a lot!")
            [sent] = await server.wait_for("sendMessage", timeout=60)
            process.send_signal(signal.SIGTERM)
            _stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    log = stderr.decode()
    assert process.returncode == 0, log
    assert sent.params["chat_id"] in (4242, "4242")
    assert server.token not in log and "I am happy today" not in log
    assert "Shutting down" in log
    with sqlite3.connect(database) as connection:
        statuses = connection.execute("SELECT role, status FROM messages ORDER BY id").fetchall()
        moods = connection.execute("SELECT label FROM mood_entries").fetchall()
    assert statuses == [("user", "answered"), ("assistant", "answered")]
    assert len(moods) == 1 and moods[0][0] in ("positive", "neutral", "negative")
    assert not Path(f"{database}-wal").exists() or Path(f"{database}-wal").stat().st_size == 0
