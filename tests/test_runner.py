"""The runner: start adapters around one app, deliver recovered replies, shut down cleanly."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from adapters.runner import NO_TOKEN_MESSAGE, configured_platforms, serve
from bot.bootstrap import bootstrap
from bot.errors import ConfigurationError, MoodmateError, PlatformError
from bot.model.fake import FakeModel
from bot.types import IncomingMessage, Platform, Reply
from storage import open_repository
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]


class RecordingAdapter:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.delivered: list[tuple[str, str]] = []
        self.lost = asyncio.Event()

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        self.delivered.append((message.chat_id, reply.text))

    async def wait_lost(self) -> MoodmateError:
        await self.lost.wait()
        return PlatformError("the platform is gone")


def test_no_token_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TELEGRAM_TOKEN") as caught:
        configured_platforms(make_settings(tmp_path))
    assert str(caught.value) == NO_TOKEN_MESSAGE
    both = configured_platforms(make_settings(tmp_path, telegram_token="1:a", discord_token="x"))
    assert both == [Platform.TELEGRAM, Platform.DISCORD]


async def test_serve_recovers_pending_messages_and_stops_cleanly(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    repository = open_repository(settings.database_url)
    await repository.initialize()
    user = await repository.ensure_user("telegram", "5", "Ada")
    chat = await repository.ensure_chat("telegram", "5", True, user.id)
    await repository.add_message(user.id, chat.id, "user", "left pending by a crash, but happy")
    await repository.close()

    app = await bootstrap(settings, model=FakeModel())
    adapter = RecordingAdapter()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, {Platform.TELEGRAM: adapter}, stop))
    for _ in range(200):
        if adapter.delivered:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(server, 10)

    assert adapter.events == ["start", "stop"]
    assert [chat_id for chat_id, _ in adapter.delivered] == ["5"]
    check = open_repository(settings.database_url)
    await check.initialize()
    assert await check.pending_messages() == []
    await check.close()


async def test_a_platform_lost_for_good_stops_everything_with_its_error(tmp_path: Path) -> None:
    app = await bootstrap(make_settings(tmp_path), model=FakeModel())
    healthy, failing = RecordingAdapter(), RecordingAdapter()
    server = asyncio.create_task(
        serve(app, {Platform.TELEGRAM: healthy, Platform.DISCORD: failing}, asyncio.Event())
    )
    for _ in range(200):
        if failing.events:
            break
        await asyncio.sleep(0.01)
    failing.lost.set()
    with pytest.raises(PlatformError, match="the platform is gone"):
        await asyncio.wait_for(server, 10)
    assert healthy.events == ["start", "stop"] and failing.events == ["start", "stop"]


def test_load_script_loses_nothing_and_is_fair(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import loadtest
    finally:
        sys.path.remove(str(ROOT / "bench"))
    args = loadtest.main.__globals__["argparse"].Namespace(
        users=8,
        messages=3,
        real=False,
        mood_seconds=0.005,
        reply_seconds=0.02,
        reply_tokens=16,
        max_pending=2,
        spread=0.05,
        think=0.01,
        seed=1,
    )
    result = asyncio.run(loadtest.run_load(args, tmp_path / "load.db"))
    assert result["messages_in"] == 24
    assert result["lost"] == 0 and result["failed"] == 0
    assert result["answered"] + result["refused"] == 24
    assert result["fairness_max_calls_by_one_other_user_before_first_reply"] <= 1


async def test_retention_job_purges_old_texts_but_keeps_moods(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    app = await bootstrap(make_settings(tmp_path, message_retention_days=30), model=FakeModel())
    user = await app.repository.ensure_user("console", "me", "me")
    chat = await app.repository.ensure_chat("console", "me", True, user.id)
    old = datetime.now(UTC) - timedelta(days=31)
    stored = await app.repository.add_message(user.id, chat.id, "user", "old diary entry", created_at=old)
    await app.repository.add_mood(user.id, chat.id, stored.id, "negative", 0.9, created_at=old)
    async with app:  # starting the app runs the retention job once right away
        for _ in range(100):
            if (await app.repository.messages_for_user(user.id))[0].text is None:
                break
            await asyncio.sleep(0.01)
        [message] = await app.repository.messages_for_user(user.id)
        [mood] = await app.repository.moods(user.id)
    assert message.text is None
    assert (mood.label, mood.score, mood.created_at) == ("negative", 0.9, old)
