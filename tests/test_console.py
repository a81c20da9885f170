"""The console adapter and the ``moodmate`` command line."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from adapters.console import ConsoleAdapter
from adapters.runner import NO_TOKEN_MESSAGE
from bot.bootstrap import App
from bot.presentation import mood_badge, mood_tag, split_message
from bot.types import Mood, MoodLabel

TAG = re.compile(r"^\[(positive|neutral|negative) (0|1)\.\d\d\] \S")


async def test_piped_input_answers_each_line_and_exits(app: App, tmp_path: Path) -> None:
    out = io.StringIO()
    stdin = io.StringIO("I'm exhausted after work\n\n/mood\n/export\n")
    await ConsoleAdapter(app.engine, stdin=stdin, stdout=out, user_id="tester", export_dir=tmp_path).run()
    lines = out.getvalue().splitlines()
    assert TAG.match(lines[0]), lines[0]
    assert lines[0].startswith("[negative")
    assert any("1 message" in line or "1 " in line for line in lines[1:])
    saved = sorted(p.suffix for p in tmp_path.iterdir())
    assert ".csv" in saved and ".json" in saved


async def test_a_crisis_line_gets_the_fixed_reply_without_a_mood_tag(app: App, tmp_path: Path) -> None:
    from bot.safety.replies import crisis_reply

    out = io.StringIO()
    stdin = io.StringIO("我想结束自己的生命\nI'm so hungry I could die\n")
    await ConsoleAdapter(app.engine, stdin=stdin, stdout=out, user_id="tester", export_dir=tmp_path).run()
    printed = out.getvalue()
    fixed = crisis_reply("我想结束自己的生命", None)
    assert printed.startswith(fixed + "\n")
    assert TAG.match(printed[len(fixed) + 1 :])  # the look-alike after it gets an ordinary reply


def _run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``moodmate ARGS`` in a clean environment (no tokens, a temporary home and database)."""
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
        # The code under test, also where the installed package points at another checkout.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_cli_run_without_tokens_says_so_in_one_sentence(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "run")
    assert result.returncode == 2
    assert result.stderr.strip() == f"moodmate: {NO_TOKEN_MESSAGE}"


def test_cli_bad_setting_is_one_sentence(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "stats", MOODMATE_QUEUE_SIZE="lots")
    assert result.returncode == 2
    assert result.stderr.startswith("moodmate: Invalid settings") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_stats_prints_counts_but_never_text(tmp_path: Path) -> None:
    import asyncio

    from storage import open_repository

    async def seed() -> None:
        repository = open_repository(f"sqlite+aiosqlite:///{tmp_path}/x.db")
        await repository.initialize()
        user = await repository.ensure_user("telegram", "1", "Ada")
        chat = await repository.ensure_chat("telegram", "1", True, user.id)
        stored = await repository.add_message(user.id, chat.id, "user", "a very private sentence")
        await repository.add_mood(user.id, chat.id, stored.id, "negative", 0.8)
        await repository.add_safety_event("telegram")
        await repository.close()

    asyncio.run(seed())
    result = _run_cli(tmp_path, "stats")
    assert result.returncode == 0, result.stderr
    assert "users\t1" in result.stdout and "negative\t1" in result.stdout
    assert "crisis replies\t1" in result.stdout
    assert "private sentence" not in result.stdout + result.stderr


def test_mood_formats() -> None:
    mood = Mood.from_probabilities(
        {MoodLabel.NEGATIVE: 0.91, MoodLabel.NEUTRAL: 0.05, MoodLabel.POSITIVE: 0.04}
    )
    assert mood_tag(mood) == "[negative 0.91]"
    assert mood_badge(mood) == "😟 negative 0.91"


def test_split_message_keeps_text_and_limits() -> None:
    text = ("A sentence that ends here. " * 40 + "\n\n") * 12 + "y" * 5000
    parts = split_message(text, 4096)
    assert "".join(parts) == text
    assert all(0 < len(p) <= 4096 for p in parts)
    assert parts[0].endswith("\n\n")  # cut at a paragraph break when one is available
    assert split_message("short", 10) == ["short"]
    assert split_message("", 10) == [""]


async def test_the_prompt_shows_before_the_model_is_ready_and_the_first_message_waits(
    app: App, tmp_path: Path
) -> None:
    import asyncio

    from adapters.console import PROMPT, STILL_LOADING

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    loaded = asyncio.Event()
    lines: asyncio.Queue[str] = asyncio.Queue()

    class Keyboard(Terminal):
        def readline(self) -> str:  # called in a worker thread, as a real terminal's
            return asyncio.run_coroutine_threadsafe(lines.get(), loop).result()

    async def slow_engine():  # type: ignore[no-untyped-def]
        await loaded.wait()  # the model "loads" until the test says so
        return app.engine

    loop = asyncio.get_running_loop()
    out = Terminal()
    adapter = ConsoleAdapter(
        asyncio.ensure_future(slow_engine()), stdin=Keyboard(), stdout=out, user_id="tester"
    )
    running = asyncio.create_task(adapter.run())
    for _ in range(100):
        if out.getvalue().endswith(PROMPT):
            break
        await asyncio.sleep(0.01)
    assert out.getvalue().endswith(PROMPT) and not loaded.is_set()
    await lines.put("I'm exhausted after work\n")
    for _ in range(100):
        if STILL_LOADING in out.getvalue():
            break
        await asyncio.sleep(0.01)
    assert STILL_LOADING in out.getvalue()
    assert "[negative" not in out.getvalue()  # no answer while the model is loading
    loaded.set()
    for _ in range(500):
        if out.getvalue().count(PROMPT) >= 2:
            break
        await asyncio.sleep(0.01)
    printed = out.getvalue()
    assert printed.count(STILL_LOADING) == 1
    assert TAG.match(printed.split(STILL_LOADING + "\n", 1)[1]), printed
    await lines.put("/quit\n")
    await asyncio.wait_for(running, 5)
