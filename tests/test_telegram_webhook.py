"""Telegram webhook mode: PTB's webhook server behind the public URL, the secret checked on every request."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from adapters.telegram import TelegramAdapter
from adapters.telegram.config import webhook_from_settings
from bot.bootstrap import bootstrap
from bot.errors import ConfigurationError
from bot.model.fake import FakeModel
from tests.conftest import make_settings
from tests.fakes.telegram_server import FakeTelegramServer

PUBLIC_URL = "https://bot.example.com/telegram/hook"
SECRET = "s3cret_-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def webhook_settings(tmp_path: Path, server: FakeTelegramServer, port: int, **overrides: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "telegram_token": server.token,
        "telegram_api_base_url": server.root_url,
        "telegram_webhook_url": PUBLIC_URL,
        "telegram_webhook_listen": f"127.0.0.1:{port}",
        "telegram_webhook_secret": SECRET,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


async def test_webhook_mode_sets_the_webhook_and_answers_what_telegram_posts(tmp_path: Path) -> None:
    async with FakeTelegramServer() as server:
        port = free_port()
        server.route_webhook(PUBLIC_URL, f"http://127.0.0.1:{port}/telegram/hook")
        settings = webhook_settings(tmp_path, server, port)
        app = await bootstrap(settings, model=FakeModel())
        await app.start()
        adapter = TelegramAdapter(settings, app.engine)
        await adapter.start()
        try:
            [hook] = server.calls_to("setWebhook", ok_only=True)
            assert hook.params["url"] == PUBLIC_URL and hook.params["secret_token"] == SECRET
            assert set(hook.params["allowed_updates"]) == {"message", "callback_query"}
            alice = server.user(42, "Alice")
            server.send_text(server.private_chat(alice), alice, "I am happy today")
            [sent] = await server.wait_for("sendMessage", timeout=10)
            assert "happy" in sent.params["text"]
            assert server.calls_to("getUpdates") == []
            assert [status for _, status, _ in server.webhook_posts] == [200]

            update = {"update_id": 1, "message": {**server.sent_messages()[0], "text": "forged"}}
            async with aiohttp.ClientSession() as session:
                for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                    async with session.post(
                        f"http://127.0.0.1:{port}/telegram/hook",
                        data=json.dumps(update),
                        headers={"Content-Type": "application/json", **headers},
                    ) as response:
                        assert response.status == 403
            await asyncio.sleep(0.2)
            user = await app.repository.get_user("telegram", "42")
            assert user is not None
            texts = [m.text for m in await app.repository.messages_for_user(user.id) if m.role == "user"]
            assert texts == ["I am happy today"]
            [stored] = [m for m in await app.repository.messages_for_user(user.id) if m.role == "user"]
            assert stored.status == "answered"  # the adapter confirmed the send
        finally:
            await adapter.stop()
            await app.stop()


async def test_a_busy_webhook_address_is_one_sentence(tmp_path: Path) -> None:
    async with FakeTelegramServer() as server:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            settings = webhook_settings(tmp_path, server, port)
            app = await bootstrap(settings, model=FakeModel())
            adapter = TelegramAdapter(settings, app.engine)
            with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{port} .*TELEGRAM_WEBHOOK_LISTEN"):
                await adapter.start()
            await app.stop()


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"telegram_webhook_url": "http://bot.example.com/hook"}, "https://"),
        ({"telegram_webhook_secret": None}, "TELEGRAM_WEBHOOK_SECRET must be set"),
        ({"telegram_webhook_secret": "has spaces"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"telegram_webhook_listen": "8443"}, "host:port"),
        ({"telegram_webhook_url": None}, "need TELEGRAM_WEBHOOK_URL"),
    ],
)
def test_bad_webhook_settings_are_one_sentence(tmp_path: Path, overrides: dict, names: str) -> None:  # type: ignore[type-arg]
    values = {
        "telegram_webhook_url": PUBLIC_URL,
        "telegram_webhook_listen": "127.0.0.1:8443",
        "telegram_webhook_secret": SECRET,
        **overrides,
    }
    with pytest.raises(ConfigurationError, match=names):
        webhook_from_settings(make_settings(tmp_path, **values))


def test_polling_stays_the_default_and_the_path_comes_from_the_url(tmp_path: Path) -> None:
    assert webhook_from_settings(make_settings(tmp_path)) is None
    webhook = webhook_from_settings(
        make_settings(
            tmp_path,
            telegram_webhook_url=PUBLIC_URL,
            telegram_webhook_listen="0.0.0.0:8443",
            telegram_webhook_secret=SECRET,
        )
    )
    assert webhook is not None and (webhook.host, webhook.port, webhook.path) == (
        "0.0.0.0",
        8443,
        "telegram/hook",
    )
