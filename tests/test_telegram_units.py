"""The Telegram adapter's pure parts, and the fake Bot API server's protocol (raw HTTP, no SDK)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from telegram import Bot, Message

from adapters.telegram.addressing import BotIdentity, is_addressed, strip_bot_mention
from adapters.telegram.config import Allowlist, api_urls
from adapters.telegram.formatting import (
    TEXT_LIMIT,
    badge_line,
    preview_text,
    reply_texts,
    split_for_telegram,
    utf16_len,
)
from adapters.telegram.outbox import Outbox, TelegramNetworkError
from bot.errors import ConfigurationError, PlatformError
from bot.types import Mood, MoodLabel, Reply, ReplyKind
from tests.fakes.telegram_server import DEFAULT_TOKEN, FakeTelegramServer, detect_entities

ME = BotIdentity(id=123456789, username="moodmate_test_bot")
HAPPY = Mood(MoodLabel.POSITIVE, 0.9)

# ---------------------------------------------------------------------- formatting


def test_chat_reply_starts_with_the_mood_badge():
    assert reply_texts(Reply("Nice to hear!", mood=HAPPY)) == ["🙂 positive 0.90\nNice to hear!"]
    assert reply_texts(Reply("Done.", kind=ReplyKind.COMMAND)) == ["Done."]
    assert badge_line(Reply("x", kind=ReplyKind.ERROR, mood=HAPPY)) == ""


@pytest.mark.parametrize("unit", ["word ", "Short sentence. ", "😀", "段落。\n\n", "x"])
def test_split_parts_fit_and_join_back(unit: str):
    text = (unit * (12_000 // len(unit)))[:12_000].strip() or "x"
    parts = reply_texts(Reply(text, mood=HAPPY))
    assert len(parts) >= 2
    assert all(len(part) <= TEXT_LIMIT and utf16_len(part) <= TEXT_LIMIT for part in parts)
    assert all(part.strip() for part in parts)
    assert parts[0].startswith("🙂 positive 0.90\n")
    assert "".join(parts).removeprefix("🙂 positive 0.90\n") == text


def test_split_prefers_paragraph_ends():
    paragraph = "A sentence that fills the paragraph. " * 30
    text = "\n\n".join([paragraph.strip()] * 8)
    parts = split_for_telegram(text)
    assert all(part.endswith("\n\n") for part in parts[:-1])


def test_preview_is_marked_unfinished_and_fits():
    assert preview_text("Hello there") == "Hello there …"
    long = preview_text("word " * 2000)
    assert long.endswith(" …") and len(long) <= TEXT_LIMIT


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("setting", "base"),
    [
        (None, "https://api.telegram.org/bot"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/bot"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/bot"),
        ("http://127.0.0.1:8081/bot", "http://127.0.0.1:8081/bot"),
        (" http://127.0.0.1:8081/bot/ ", "http://127.0.0.1:8081/bot"),
        ("https://tg.example.org/api", "https://tg.example.org/api/bot"),
    ],
)
def test_api_base_url_forms(setting: str | None, base: str):
    urls = api_urls(setting)
    assert urls.base_url == base
    assert urls.base_file_url == base.removesuffix("/bot") + "/file/bot"


@pytest.mark.parametrize("setting", ["127.0.0.1:8081", "ftp://host", "http://h:1/bot123:ABC-def"])
def test_bad_api_base_urls_are_configuration_errors(setting: str):
    with pytest.raises(ConfigurationError):
        api_urls(setting)


def test_allowlist():
    everyone = Allowlist(frozenset(), frozenset())
    assert everyone.allows(1, 1)
    users = Allowlist(frozenset({"42"}), frozenset())
    assert users.allows(42, -100) and not users.allows(7, -100)
    both = Allowlist(frozenset({"42"}), frozenset({"-100"}))
    assert both.allows(42, -100) and not both.allows(42, 42) and not both.allows(7, -100)


# ---------------------------------------------------------------------- addressing


def message(text: str, *, chat_type: str = "supergroup", reply_from: dict[str, Any] | None = None) -> Message:
    chat = {"id": 42 if chat_type == "private" else -100, "type": chat_type}
    data: dict[str, Any] = {
        "message_id": 5,
        "date": int(time.time()),
        "chat": chat,
        "from": {"id": 42, "is_bot": False, "first_name": "Alice"},
        "text": text,
        "entities": detect_entities(text),
    }
    if reply_from is not None:
        data["reply_to_message"] = {
            "message_id": 4,
            "date": 0,
            "chat": chat,
            "from": reply_from,
            "text": "hi",
        }
    return Message.de_json(data, None)


@pytest.mark.parametrize(
    ("text", "addressed"),
    [
        ("hello everyone", False),
        ("@moodmate_test_bot hi", True),
        ("hi @MoodMate_Test_Bot!", True),
        ("@moodmate_test_bot_fan hi", False),
        ("@someone_else hi", False),
        ("/mood", True),
        ("/mood@moodmate_test_bot 7d", True),
        ("/mood@other_bot", False),
        ("see /mood later", False),
        ("😀 @moodmate_test_bot after an emoji", True),
        ("/mood@other_bot @moodmate_test_bot", True),
    ],
)
def test_group_addressing(text: str, addressed: bool):
    assert is_addressed(message(text), ME) is addressed


def test_private_messages_are_always_addressed_and_replies_to_the_bot_count():
    assert is_addressed(message("hello", chat_type="private"), ME)
    bot_user = {"id": ME.id, "is_bot": True, "first_name": "Moodmate", "username": ME.username}
    assert is_addressed(message("thanks", reply_from=bot_user), ME)
    assert not is_addressed(message("thanks", reply_from={"id": 7, "is_bot": False, "first_name": "B"}), ME)


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("@moodmate_test_bot how are you?", "how are you?"),
        ("@moodmate_test_bot, how are you?", "how are you?"),
        ("so @moodmate_test_bot what now", "so what now"),
        ("thanks @moodmate_test_bot", "thanks"),
        ("/mood@moodmate_test_bot 7d", "/mood 7d"),
        ("😀😀 @moodmate_test_bot ok", "😀😀 ok"),
        ("ask @alice_b too", "ask @alice_b too"),
        ("@moodmate_test_bot", ""),
    ],
)
def test_bot_mention_is_removed(text: str, stripped: str):
    parsed = message(text)
    assert strip_bot_mention(text, parsed.entities, ME) == stripped


# ---------------------------------------------------------------------- the fake Bot API server


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    fake: FakeTelegramServer,
    method: str,
    token: str = DEFAULT_TOKEN,
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{fake.root_url}/bot{token}/{method}", **kwargs) as response:
        return response.status, await response.json()


async def test_fake_answers_like_the_bot_api(fake: FakeTelegramServer, http: aiohttp.ClientSession):
    status, body = await call(http, fake, "getMe")
    assert status == 200 and body["ok"] is True and body["result"]["is_bot"] is True
    status, body = await call(http, fake, "GETME")  # method names are case-insensitive
    assert status == 200
    assert await call(http, fake, "noSuchMethod") == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found"},
    )
    assert await call(http, fake, "getMe", token="123:wrong") == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    status, _ = await call(http, fake, "getMe", token="garbage")
    assert status == 404


async def test_fake_decodes_form_json_and_query_parameters(
    fake: FakeTelegramServer, http: aiohttp.ClientSession
):
    alice = fake.user(42)
    fake.register_chat(fake.private_chat(alice))
    markup = {"inline_keyboard": [[{"text": "Yes", "callback_data": "/forget confirm"}]]}
    status, body = await call(
        http,
        fake,
        "sendMessage",
        data={"chat_id": "42", "text": "[1, 2]", "reply_markup": json.dumps(markup)},
    )
    assert status == 200
    result = body["result"]
    assert result["text"] == "[1, 2]" and result["chat"]["id"] == 42 and result["from"]["is_bot"] is True
    assert result["reply_markup"] == markup
    status, body = await call(http, fake, "sendMessage", json={"chat_id": 42, "text": "json body"})
    assert status == 200 and body["result"]["text"] == "json body"
    async with http.get(f"{fake.base_url}{DEFAULT_TOKEN}/sendMessage?chat_id=42&text=query") as response:
        assert (await response.json())["result"]["text"] == "query"
    assert fake.calls_to("sendMessage")[0].params["reply_markup"] == markup


async def test_fake_rejects_bad_messages(fake: FakeTelegramServer, http: aiohttp.ClientSession):
    fake.register_chat(fake.private_chat(fake.user(42)))
    cases = [
        ({"chat_id": "42", "text": ""}, 400, "message text is empty"),
        ({"chat_id": "42", "text": "x" * 4097}, 400, "message is too long"),
        ({"chat_id": "42", "text": "<b>open", "parse_mode": "HTML"}, 400, "can't parse entities"),
        ({"chat_id": "42", "text": "<x>y</x>", "parse_mode": "HTML"}, 400, "can't parse entities"),
        ({"chat_id": "42", "text": "Hi.", "parse_mode": "MarkdownV2"}, 400, "can't parse entities"),
        ({"chat_id": "-5", "text": "hi"}, 400, "chat not found"),
        ({"chat_id": "77", "text": "hi"}, 403, "can't initiate conversation"),
    ]
    for data, code, phrase in cases:
        status, body = await call(http, fake, "sendMessage", data=data)
        assert (status, body["ok"], body["error_code"]) == (code, False, code), data
        assert phrase in body["description"], data
    status, body = await call(
        http, fake, "sendMessage", data={"chat_id": "42", "text": "<b>ok</b> &amp;", "parse_mode": "HTML"}
    )
    assert status == 200 and body["result"]["text"] == "ok &"


async def test_fake_injects_flood_control(fake: FakeTelegramServer, http: aiohttp.ClientSession):
    fake.register_chat(fake.private_chat(fake.user(42)))
    fake.fail_next("sendMessage", 2, retry_after=3)
    for _ in range(2):
        status, body = await call(http, fake, "sendMessage", data={"chat_id": "42", "text": "hi"})
        assert status == 429
        assert body == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        }
    status, _ = await call(http, fake, "sendMessage", data={"chat_id": "42", "text": "hi"})
    assert status == 200


async def test_fake_get_updates_offsets_and_long_polling(
    fake: FakeTelegramServer, http: aiohttp.ClientSession
):
    alice = fake.user(42)
    chat = fake.private_chat(alice)
    first = fake.send_text(chat, alice, "one")
    fake.send_text(chat, alice, "two")
    _, body = await call(http, fake, "getUpdates", data={"timeout": "0"})
    ids = [update["update_id"] for update in body["result"]]
    assert [u["message"]["text"] for u in body["result"]] == ["one", "two"]
    assert body["result"][0]["message"] == first
    _, again = await call(http, fake, "getUpdates", data={"timeout": "0"})
    assert [u["update_id"] for u in again["result"]] == ids  # not confirmed yet
    _, rest = await call(http, fake, "getUpdates", data={"offset": str(ids[0] + 1), "limit": "1"})
    assert [u["update_id"] for u in rest["result"]] == ids[1:]

    started = time.monotonic()
    waiting = asyncio.create_task(
        call(http, fake, "getUpdates", data={"offset": str(ids[1] + 1), "timeout": "5"})
    )
    await asyncio.sleep(0.2)
    fake.send_text(chat, alice, "three")
    _, woken = await waiting
    assert [u["message"]["text"] for u in woken["result"]] == ["three"]
    assert time.monotonic() - started < 2  # returned early, not after the 5 s timeout

    started = time.monotonic()
    _, empty = await call(http, fake, "getUpdates", data={"offset": str(ids[1] + 5), "timeout": "0.3"})
    assert empty == {"ok": True, "result": []} and time.monotonic() - started >= 0.25


async def test_fake_uploads_edits_and_callback_queries(fake: FakeTelegramServer, http: aiohttp.ClientSession):
    alice = fake.user(42)
    chat = fake.private_chat(alice)
    fake.register_chat(chat)
    form = aiohttp.FormData()
    form.add_field("chat_id", "42")
    form.add_field("document", "attach://part1")
    form.add_field("part1", b"a,b\n", filename="data.csv", content_type="text/csv")
    status, body = await call(http, fake, "sendDocument", data=form)
    assert status == 200 and body["result"]["document"]["file_name"] == "data.csv"
    assert fake.calls_to("sendDocument")[0].upload("document").content == b"a,b\n"  # type: ignore[union-attr]

    form = aiohttp.FormData()
    form.add_field("chat_id", "42")
    form.add_field("photo", b"not an image", filename="x.png", content_type="image/png")
    status, body = await call(http, fake, "sendPhoto", data=form)
    assert status == 400 and "IMAGE_PROCESS_FAILED" in body["description"]

    markup = {"inline_keyboard": [[{"text": "Yes", "callback_data": "yes"}]]}
    _, sent = await call(
        http, fake, "sendMessage", json={"chat_id": 42, "text": "Sure?", "reply_markup": markup}
    )
    message_id = sent["result"]["message_id"]
    edit = {"chat_id": 42, "message_id": message_id, "text": "Sure?", "reply_markup": markup}
    status, body = await call(http, fake, "editMessageText", json=edit)
    assert status == 400 and "message is not modified" in body["description"]

    query_id = fake.press_button(sent["result"], alice, data="yes")
    _, updates = await call(http, fake, "getUpdates")
    assert updates["result"][-1]["callback_query"]["data"] == "yes"
    assert (await call(http, fake, "answerCallbackQuery", json={"callback_query_id": query_id}))[0] == 200
    assert (await call(http, fake, "answerCallbackQuery", json={"callback_query_id": query_id}))[0] == 400

    status, body = await call(
        http, fake, "editMessageReplyMarkup", json={"chat_id": 42, "message_id": message_id}
    )
    assert status == 200 and "reply_markup" not in body["result"]
    with pytest.raises(LookupError):
        fake.press_button(sent["result"], alice, data="yes")


# ---------------------------------------------------------------------- retries after network errors


@pytest.fixture
async def outbox(fake: FakeTelegramServer) -> AsyncIterator[Outbox]:
    fake.register_chat(fake.private_chat(fake.user(42)))
    async with Bot(DEFAULT_TOKEN, base_url=fake.base_url) as bot:
        yield Outbox(bot, attempts=3, backoff=0.05)


async def test_outbox_retries_network_errors_with_backoff(fake: FakeTelegramServer, outbox: Outbox):
    fake.drop_next("sendMessage", 2)
    sent = await outbox.text(42, "hello")
    calls = fake.calls_to("sendMessage")
    assert [call.status for call in calls] == [0, 0, 200] and sent.text == "hello"
    assert calls[1].at - calls[0].at >= 0.045 and calls[2].at - calls[1].at >= 0.095

    fake.drop_next("sendMessage", 3)
    with pytest.raises(TelegramNetworkError) as raised:
        await outbox.text(42, "hello again")
    assert len(fake.calls_to("sendMessage")) == 6
    assert "hello" not in str(raised.value) and DEFAULT_TOKEN not in str(raised.value)


async def test_outbox_does_not_retry_refusals_or_best_effort_requests(
    fake: FakeTelegramServer, outbox: Outbox
):
    fake.fail_next("sendMessage", description="Bad Request: chat not found")  # a BadRequest is final
    with pytest.raises(PlatformError) as raised:
        await outbox.text(42, "hi")
    assert not isinstance(raised.value, TelegramNetworkError)
    assert len(fake.calls_to("sendMessage")) == 1

    fake.drop_next("sendChatAction")
    with pytest.raises(TelegramNetworkError):
        await outbox.typing(42)
    fake.drop_next("sendMessage")
    with pytest.raises(TelegramNetworkError):
        await outbox.text(42, "preview …", retry=False)
    assert len(fake.calls_to("sendChatAction")) == 1 and len(fake.calls_to("sendMessage")) == 2


async def test_outbox_edit_retried_after_a_lost_answer_counts_as_done(
    fake: FakeTelegramServer, outbox: Outbox
):
    sent = await outbox.text(42, "draft …")
    fake.drop_next("editMessageText", after_processing=True)
    await outbox.edit(42, sent.message_id, "final")
    assert [call.status for call in fake.calls_to("editMessageText")] == [0, 400]
    stored = fake.message(42, sent.message_id)
    assert stored is not None and stored["text"] == "final"
