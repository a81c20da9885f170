"""The whole bot in server mode: settings -> bootstrap -> engine -> ServerModel -> a fake OpenAI server
on loopback, through the real HTTP client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.bootstrap import App, bootstrap
from bot.engine import ReplySink
from bot.errors import ModelInterruptedError, ModelUnavailableError
from bot.model.server import client as server_client
from bot.model.server.model import ServerModel
from bot.records import MessageStatus
from bot.types import Mood, MoodLabel, ReplyKind
from tests.conftest import make_settings, message
from tests.fakes.openai_server import FakeOpenAIServer, Fault

ROOT = Path(__file__).resolve().parents[1]


class RecordingSink(ReplySink):
    def __init__(self) -> None:
        self.moods: list[Mood] = []
        self.partials: list[str] = []

    async def mood(self, mood: Mood) -> None:
        self.moods.append(mood)

    async def partial(self, text: str) -> None:
        self.partials.append(text)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries as in production, with shorter waits between them."""
    monkeypatch.setattr(
        server_client,
        "DEFAULT_RETRY",
        server_client.RetryPolicy(backoff_seconds=0.05, max_backoff_seconds=0.2),
    )


async def _app(tmp_path: Path, server: FakeOpenAIServer, **overrides: object) -> App:
    settings = make_settings(tmp_path, inference_url=server.base_url, **overrides)
    return await bootstrap(settings)


async def _user_messages(app: App) -> list:  # type: ignore[type-arg]
    user = await app.repository.get_user("console", "u1")
    assert user is not None
    return [row for row in await app.repository.messages_for_user(user.id) if row.role == "user"]


async def test_server_mode_answers_streams_and_logs_the_mood(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    server.piece_delay = 0.12
    app = await _app(tmp_path, server)
    assert isinstance(app.model, ServerModel) and app.worker.concurrency == 4
    async with app:
        sink = RecordingSink()
        [reply] = await app.engine.handle(message("I'm so happy today, thanks!"), sink)
        assert reply.kind is ReplyKind.CHAT and reply.mood is not None
        assert reply.mood.label is MoodLabel.POSITIVE
        assert sink.moods and sink.partials, "the reply was shown while it streamed"
        [second] = await app.engine.handle(message("What time is it in Tokyo?"))
        [_, stored_second] = await _user_messages(app)
        assert stored_second.status == MessageStatus.REPLIED  # stored with its mood, not yet sent
        await app.engine.delivered(second)
        [_, stored_second] = await _user_messages(app)
        assert stored_second.status == MessageStatus.ANSWERED
    mood_prompts = [body["messages"] for body in server.chat_requests() if body.get("max_tokens") == 1]
    last = json.dumps(mood_prompts[-1], ensure_ascii=False)
    assert "Tokyo" in last and "happy today" not in last  # the mood read saw nothing of the history
    reply_prompt = json.dumps(server.chat_requests()[-1]["messages"], ensure_ascii=False)
    assert "happy today" in reply_prompt  # the reply did


async def test_a_server_that_is_down_gets_a_kind_reply_and_the_bot_recovers(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    app = await _app(tmp_path, server)
    async with app:
        server.stop()
        [reply] = await app.engine.handle(message("hello?"))
        assert reply.kind is ReplyKind.ERROR and reply.text == ModelUnavailableError.user_message
        [failed] = await _user_messages(app)
        assert failed.status == MessageStatus.FAILED
        server.start()  # same port
        [answered] = await app.engine.handle(message("I'm back, and glad"))
        assert answered.kind is ReplyKind.CHAT


async def test_a_reply_cut_after_it_was_shown_gets_a_kind_reply_not_a_second_copy(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    server.piece_delay = 0.15
    app = await _app(tmp_path, server)
    async with app:
        server.fail_next(Fault("cut", after=9, stream=True))
        sink = RecordingSink()
        [reply] = await app.engine.handle(message("tell me something"), sink)
        assert reply.kind is ReplyKind.ERROR and reply.text == ModelInterruptedError.user_message
        assert sink.partials  # part of it was on screen
        assert sum(1 for body in server.chat_requests() if body.get("stream")) == 1
        [failed] = await _user_messages(app)
        assert failed.status == MessageStatus.FAILED
        [next_reply] = await app.engine.handle(message("are you there?"))
        assert next_reply.kind is ReplyKind.CHAT


async def test_many_users_at_once_keep_up_to_the_concurrency_in_flight(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    server.piece_delay = 0.01
    server.mood_delay = 0.05
    app = await _app(tmp_path, server, inference_concurrency=3, max_pending_per_user=5)
    async with app:
        replies = await asyncio.gather(
            *(
                app.engine.handle(message(f"message {i} from {u}", user=f"u{u}", chat=f"c{u}"))
                for u in range(8)
                for i in range(2)
            )
        )
    assert all(reply.kind is ReplyKind.CHAT for [reply] in replies)
    assert 2 <= server.max_in_flight <= 3


def test_server_mode_starts_fast_small_and_without_torch(tmp_path: Path, server: FakeOpenAIServer) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MOODMATE_INFERENCE_URL": server.base_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'start.db'}",
    }

    def measure() -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "server_startup.py")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    figures = measure()
    if figures["ready_s"] >= 3.0:  # wall time on a machine busy with other work: measure once more
        figures = min(figures, measure(), key=lambda run: run["ready_s"])  # type: ignore[arg-type,return-value]
    assert figures["cpu_s"] < 3.0, figures
    assert figures["reply_kind"] == "chat"
    assert figures["torch_imported"] is False and figures["transformers_imported"] is False
    assert figures["rss_mb"] < 300, figures
    assert figures["ready_s"] < 3.0, figures
