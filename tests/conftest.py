"""Shared fixtures: settings on a temporary database, and an app wired with the fake model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bot.bootstrap import App, bootstrap
from bot.model.base import ChatTurn
from bot.model.fake import FakeModel
from bot.prompts import reply_examples_for
from bot.settings import Settings
from bot.types import IncomingMessage, Platform


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings isolated from the environment and any ``.env`` file."""
    values: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'moodmate.db'}",
        "cache_dir": tmp_path / "cache",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def message(
    text: str,
    *,
    user: str = "u1",
    chat: str = "c1",
    platform: Platform = Platform.CONSOLE,
    addressed: bool = True,
    private: bool = True,
    name: str = "Ada",
) -> IncomingMessage:
    return IncomingMessage(
        platform=platform,
        chat_id=chat,
        user_id=user,
        display_name=name,
        text=text,
        addressed_to_bot=addressed,
        chat_is_private=private,
    )


def conversation(history: Sequence[ChatTurn]) -> list[ChatTurn]:
    """The real turns of a reply prompt's history, without the example exchanges where they lead it."""
    examples = reply_examples_for(history[-1].content)
    if tuple(history[: len(examples)]) == examples:
        return list(history[len(examples) :])
    return list(history)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def fake_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def app(settings: Settings, fake_model: FakeModel) -> AsyncIterator[App]:
    app = await bootstrap(settings, model=fake_model)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
