"""The Telegram adapter end to end: moodmate's real startup path (bootstrap, the runner's adapter
wiring and ``serve``) drives python-telegram-bot, which talks HTTP to a fake Bot API server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.runner import build_adapters, serve
from adapters.telegram import TelegramAdapter
from adapters.telegram.adapter import NON_TEXT_REPLY, PRIVATE_SENT_NOTE, TOKEN_REVOKED
from bot.bootstrap import App, bootstrap
from bot.delivery import queue_notice
from bot.errors import ConfigurationError, MoodmateError
from bot.model.base import ChatTurn
from bot.model.fake import FakeModel
from bot.moodlog import read_csv_export
from bot.settings import Settings
from bot.types import Platform
from tests.conftest import conversation, make_settings
from tests.fakes.telegram_server import ApiCall, FakeTelegramServer, image_size
from tests.rows import count_rows

# PTB itself warns about its own RetryAfter.retry_after type change; nothing to do on our side.
pytestmark = pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:DeprecationWarning")

BOT_USERNAME = "moodmate_test_bot"
GROUP_ID = -1001234567890
BADGE = re.compile(r"^(🙂|😐|😟) (positive|neutral|negative) \d\.\d\d$")


def echo(system: str, history: Sequence[ChatTurn]) -> str:
    return f"echo: {history[-1].content}"


@dataclass
class Running:
    server: FakeTelegramServer
    app: App
    settings: Settings
    #: ``serve`` running the bot (as ``moodmate run`` does).
    task: asyncio.Task[None]

    async def user_id(self, telegram_id: int) -> int | None:
        user = await self.app.repository.get_user("telegram", str(telegram_id))
        return None if user is None else user.id

    async def replies(self, chat_id: int, count: int = 1, *, timeout: float = 5.0) -> list[ApiCall]:
        return await self.server.wait_for(
            "sendMessage", count, timeout=timeout, where=lambda c: c.params.get("chat_id") == str(chat_id)
        )

    def sent(self, chat_id: int, method: str = "sendMessage") -> list[ApiCall]:
        return [
            c for c in self.server.calls_to(method, ok_only=True) if c.params.get("chat_id") == str(chat_id)
        ]


Launch = Callable[..., Awaitable[Running]]


@pytest.fixture
async def server() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer(bot_username=BOT_USERNAME) as fake:
        yield fake


@pytest.fixture
async def launch(tmp_path: Path, server: FakeTelegramServer) -> AsyncIterator[Launch]:
    """Start moodmate like ``moodmate run`` does; stopped again at the end of the test."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(
        model: Any = "fake",
        *,
        adapter_options: dict[str, Any] | None = None,
        prepare: Callable[[App], Awaitable[None]] | None = None,
        startup_timeout: float = 10.0,
        **overrides: Any,
    ) -> Running:
        values: dict[str, Any] = {"telegram_token": server.token, "telegram_api_base_url": server.base_url}
        values.update(overrides)
        settings = make_settings(tmp_path, **values)
        if model is None:
            app = await bootstrap(settings)  # the bundled model, loaded by the real loader
        else:
            app = await bootstrap(settings, model=FakeModel() if model == "fake" else model)
        if prepare is not None:
            await prepare(app)
        if adapter_options is None:
            adapters = build_adapters(app)
        else:
            adapters = {Platform.TELEGRAM: TelegramAdapter(settings, app.engine, **adapter_options)}
        stop = asyncio.Event()
        task = asyncio.create_task(serve(app, adapters, stop))
        running.append((stop, task))
        deadline = time.monotonic() + startup_timeout
        while not server.calls_to("getUpdates") and not task.done():
            assert time.monotonic() < deadline, "the bot did not start polling"
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        return Running(server, app, settings, task)

    yield start
    for stop, task in running:
        stop.set()
        if not task.done():  # a test may have awaited it already
            await asyncio.wait_for(task, 20)


def alice_in_private(server: FakeTelegramServer) -> tuple[dict[str, Any], dict[str, Any]]:
    alice = server.user(42, "Alice", "alice")
    return alice, server.private_chat(alice)


def strip_badge(text: str) -> str:
    first, _, rest = text.partition("\n")
    assert BADGE.match(first), first
    return rest


# ---------------------------------------------------------------------- start-up


async def test_startup_checks_token_registers_commands_and_polls(launch: Launch, server: FakeTelegramServer):
    await launch()
    methods = [call.method for call in server.calls]
    assert methods.index("getMe") < methods.index("getUpdates")
    assert methods.index("deleteWebhook") < methods.index("getUpdates")
    [commands] = server.calls_to("setMyCommands", ok_only=True)
    names = {command["command"] for command in commands.params["commands"]}
    assert {"start", "help", "mood", "reset", "forget", "export", "timezone", "moodlog"} <= names
    assert all(command["description"] for command in commands.params["commands"])
    poll = server.calls_to("getUpdates")[0].params
    assert set(poll["allowed_updates"]) == {"message", "callback_query"}
    assert int(poll["timeout"]) > 0  # long polling, in whole seconds


async def test_server_root_url_is_accepted_as_base_url(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo), telegram_api_base_url=server.root_url + "/")
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "hello there")
    [reply] = await bot.replies(42)
    assert strip_badge(reply.params["text"]) == "echo: hello there"


async def test_a_token_refused_while_polling_stops_moodmate_instead_of_leaving_it_deaf(
    launch: Launch, server: FakeTelegramServer, caplog: pytest.LogCaptureFixture
):
    bot = await launch(FakeModel(reply_fn=echo))
    server.fail_next("getUpdates", code=401, description="Unauthorized")
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "hello")  # ends the long poll in flight; the next one is refused
    with pytest.raises(ConfigurationError, match="TELEGRAM_TOKEN") as caught:
        await asyncio.wait_for(bot.task, 10)
    assert str(caught.value) == TOKEN_REVOKED
    stopping = [r for r in caplog.records if r.name.startswith("adapters") and r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in stopping] == [
        f"telegram stopped working for good ({TOKEN_REVOKED}); moodmate stops"
    ]  # and stopping went cleanly


async def test_invalid_token_is_one_clear_configuration_error(tmp_path: Path, server: FakeTelegramServer):
    settings = make_settings(
        tmp_path, telegram_token="999:not-the-token", telegram_api_base_url=server.base_url
    )
    app = await bootstrap(settings, model=FakeModel())
    try:
        adapter = TelegramAdapter(settings, app.engine)
        with pytest.raises(ConfigurationError) as raised:
            await adapter.start()
        message = str(raised.value)
        assert message.startswith("Telegram rejected TELEGRAM_TOKEN")
        assert "not-the-token" not in message
        assert not server.calls_to("getUpdates")
        await adapter.stop()  # stopping an adapter that never started is harmless
    finally:
        await app.stop()


# ---------------------------------------------------------------------- private chats


async def test_private_message_gets_one_reply_with_mood(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo))
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "I love this great day")
    [reply] = await bot.replies(42)
    await server.quiet()
    assert len(bot.sent(42)) == 1
    assert not server.calls_to("editMessageText")  # a fast reply is one message, never edited
    first, _, body = reply.params["text"].partition("\n")
    assert first == "🙂 positive 0.90"
    assert body == "echo: I love this great day"
    assert "parse_mode" not in reply.params
    assert "reply_parameters" not in reply.params  # private replies do not quote
    assert bot.sent(42, "sendChatAction")[0].params["action"] == "typing"
    user_id = await bot.user_id(42)
    assert user_id is not None
    moods = await bot.app.repository.moods(user_id)
    assert [mood.label for mood in moods] == ["positive"]


async def test_commands_work_in_private_chats(launch: Launch, server: FakeTelegramServer):
    bot = await launch()
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "/help")
    [reply] = await bot.replies(42)
    assert "/mood" in reply.params["text"] and "/forget" in reply.params["text"]
    assert not BADGE.match(reply.params["text"].partition("\n")[0])  # command replies carry no mood


async def test_long_reply_is_split_below_the_limit_and_joins_back(launch: Launch, server: FakeTelegramServer):
    sentences = [f"Sentence {i} keeps this reply going for a while." for i in range(400)]
    paragraphs = [" ".join(sentences[i : i + 7]) for i in range(0, len(sentences), 7)]
    long_text = "\n\n".join(paragraphs)[:9999].rstrip() + "."
    long_text += "x" * (10_000 - len(long_text))
    assert len(long_text) == 10_000
    bot = await launch(FakeModel(reply_fn=lambda system, history: long_text))
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "tell me a long story")
    await bot.replies(42, 3)
    await server.quiet()
    # The chat as the user sees it (after edits): a reply that took longer than the stream delay was
    # first shown as a preview, then edited into its first part.
    texts = [sent["text"] for sent in server.sent_messages(42)]
    assert len(texts) >= 3
    assert all(len(text) <= 4096 for text in texts)
    assert strip_badge(texts[0]) + "".join(texts[1:]) == long_text
    # Cuts fall on sentence or paragraph ends, not inside words.
    assert all(text.rstrip().endswith(".") for text in texts[:-1])


async def test_markup_characters_in_a_reply_are_delivered_intact(launch: Launch, server: FakeTelegramServer):
    tricky = "<b>bold</b> *star* _under_ [link](http://example.com) & <i>unclosed `code"
    bot = await launch(FakeModel(reply_fn=lambda system, history: tricky))
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "format me")
    [reply] = await bot.replies(42)
    assert strip_badge(reply.params["text"]) == tricky
    assert reply.params.get("parse_mode") is None
    stored = server.message(42, reply.result["message_id"])
    assert stored is not None and strip_badge(stored["text"]) == tricky


async def test_flood_control_429_delays_the_reply_instead_of_dropping_it(
    launch: Launch, server: FakeTelegramServer
):
    bot = await launch(FakeModel(reply_fn=echo))
    server.fail_next("sendMessage", retry_after=1)
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "are you there?")
    await bot.replies(42, timeout=10)
    await server.quiet()
    attempts = server.calls_to("sendMessage")
    assert [call.status for call in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0
    assert attempts[0].params["text"] == attempts[1].params["text"]
    assert strip_badge(attempts[1].params["text"]) == "echo: are you there?"


async def test_a_reply_lost_to_a_network_failure_is_sent_again(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo))  # the default backoff: the first retry after 1 s
    server.drop_next("sendMessage")
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "are you there?")
    await bot.replies(42, timeout=10)
    await server.quiet()
    attempts = server.calls_to("sendMessage")
    assert [call.status for call in attempts] == [0, 200]
    assert attempts[1].at - attempts[0].at >= 0.9
    assert attempts[0].params["text"] == attempts[1].params["text"]
    assert strip_badge(attempts[1].params["text"]) == "echo: are you there?"


async def test_network_retries_give_up_and_log_without_text_or_token(
    launch: Launch, server: FakeTelegramServer, caplog: pytest.LogCaptureFixture
):
    bot = await launch(FakeModel(reply_fn=echo), adapter_options={"network_backoff": 0.05})
    server.drop_next("sendMessage", 8)  # the reply and the apology after it both fail 4 times
    alice, chat = alice_in_private(server)
    with caplog.at_level(logging.INFO):  # texts and tokens must never be logged at INFO or above
        server.send_text(chat, alice, "a secret worry")
        await server.wait_for("sendMessage", 8, ok_only=False, timeout=10)
        await server.quiet()
    assert len(server.calls_to("sendMessage")) == 8 and not bot.sent(42)
    attempts = server.calls_to("sendMessage")
    delays = [after.at - before.at for before, after in itertools.pairwise(attempts[:4])]
    assert delays[0] >= 0.04 and delays[1] >= 0.09 and delays[2] >= 0.19  # doubling backoff
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("gave up after 4 tries" in r.getMessage() for r in warnings)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert "secret worry" not in text and server.token not in text
        assert server.token.split(":", 1)[1] not in text


async def test_non_text_messages_get_a_friendly_note_and_nothing_is_stored(
    launch: Launch, server: FakeTelegramServer
):
    bot = await launch()
    alice, chat = alice_in_private(server)
    server.send_sticker(chat, alice)
    server.send_photo(chat, alice)
    server.send_voice(chat, alice)
    server.send_document(chat, alice)
    replies = await bot.replies(42, 4)
    await server.quiet()
    assert [call.params["text"] for call in replies] == [NON_TEXT_REPLY] * 4
    assert await bot.user_id(42) is None


async def test_edited_messages_are_ignored(launch: Launch, server: FakeTelegramServer):
    model = FakeModel(reply_fn=echo)
    bot = await launch(model)
    alice, chat = alice_in_private(server)
    original = server.send_text(chat, alice, "first version")
    await bot.replies(42)
    server.edit_text(original, "second version")
    await server.wait_consumed()
    await server.quiet()
    assert len(bot.sent(42)) == 1
    assert len(model.generate_inputs) == 1


async def test_forget_asks_with_a_button_and_pressing_it_deletes_everything(
    launch: Launch, server: FakeTelegramServer
):
    bot = await launch()
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "I feel great today")
    await bot.replies(42)
    user_id = await bot.user_id(42)
    assert user_id is not None
    assert sum((await count_rows(bot.app.repository, user_id)).values()) > 0

    server.send_text(chat, alice, "/forget")
    ask = (await bot.replies(42, 2))[-1]
    buttons = [button for row in ask.params["reply_markup"]["inline_keyboard"] for button in row]
    assert {button["callback_data"] for button in buttons} == {"/forget confirm", "/forget cancel"}

    question = server.message(42, ask.result["message_id"])
    assert question is not None
    query_id = server.press_button(question, alice, data="/forget confirm")
    done = (await bot.replies(42, 3))[-1]
    await server.quiet()
    assert "deleted" in done.params["text"]
    assert server.callback_answer(query_id) is not None
    after = server.message(42, ask.result["message_id"])
    assert after is not None and "reply_markup" not in after  # the buttons are gone
    assert all(count == 0 for count in (await count_rows(bot.app.repository, user_id)).values())
    assert await bot.user_id(42) is None


async def test_forget_cancel_button_keeps_everything(launch: Launch, server: FakeTelegramServer):
    bot = await launch(telegram_allowed_user_ids=frozenset({"42"}))
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "I feel great today")
    await bot.replies(42)
    server.send_text(chat, alice, "/forget")
    ask = (await bot.replies(42, 2))[-1]
    question = server.message(42, ask.result["message_id"])
    assert question is not None
    stranger = server.user(77, "Mallory")
    ignored = server.press_button(question, stranger, data="/forget confirm")
    await server.wait_for("answerCallbackQuery")
    assert server.callback_answer(ignored) is not None  # acknowledged, nothing else
    assert server.message(42, ask.result["message_id"]) == question
    server.press_button(question, alice, label="Cancel")
    done = (await bot.replies(42, 3))[-1]
    assert "nothing was deleted" in done.params["text"].lower()
    user_id = await bot.user_id(42)
    assert user_id is not None
    assert sum((await count_rows(bot.app.repository, user_id)).values()) > 0


async def test_export_sends_documents_matching_the_stored_log(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo))
    alice, chat = alice_in_private(server)
    for text in ("I love sunny mornings", "work was awful today"):
        count = len(bot.sent(42)) + 1
        server.send_text(chat, alice, text)
        await bot.replies(42, count)
    server.send_text(chat, alice, "/export")
    documents = await server.wait_for("sendDocument", 2)
    files = {}
    for call in documents:
        upload = call.upload("document")
        assert upload is not None and upload.filename is not None
        files[upload.filename.rsplit(".", 1)[-1]] = upload.content
    assert set(files) == {"csv", "json"}

    user_id = await bot.user_id(42)
    assert user_id is not None
    stored_messages = await bot.app.repository.messages_for_user(user_id)
    stored_moods = await bot.app.repository.moods(user_id)
    exported = json.loads(files["json"])
    assert [m["text"] for m in exported["messages"]] == [m.text for m in stored_messages]
    assert (
        [m["label"] for m in exported["moods"]] == [m.label for m in stored_moods] == ["positive", "negative"]
    )
    assert "I love sunny mornings" in [m["text"] for m in exported["messages"]]
    rows = read_csv_export(files["csv"])
    assert [r["text"] for r in rows if r["record"] == "message"] == [m.text for m in stored_messages]


async def test_mood_chart_is_sent_as_a_photo(launch: Launch, server: FakeTelegramServer):
    bot = await launch()
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "I am so happy")
    await bot.replies(42)
    server.send_text(chat, alice, "/mood")
    [photo] = await server.wait_for("sendPhoto")
    upload = photo.upload("photo")
    assert upload is not None
    assert upload.content.startswith(b"\x89PNG") and image_size(upload.content) is not None
    assert photo.params["chat_id"] == "42"


async def test_typing_stays_alive_and_a_queued_message_learns_its_place(
    launch: Launch, server: FakeTelegramServer
):
    bot = await launch(
        FakeModel(reply_fn=echo, reply_delay=0.8),
        adapter_options={"typing_interval": 0.2},
    )
    alice, alice_chat = alice_in_private(server)
    bob = server.user(43, "Bob", "bob")
    bob_chat = server.private_chat(bob)
    server.send_text(alice_chat, alice, "hello from alice")
    server.send_text(bob_chat, bob, "hello from bob")
    await server.wait_for(
        "sendMessage", 2, timeout=10, where=lambda c: c.params["text"].startswith(("😐", "🙂", "😟"))
    )
    await server.quiet()
    notices = [c for c in server.calls_to("sendMessage") if c.params["text"].startswith("⏳")]
    assert len(notices) >= 1
    assert notices[0].params["text"] == queue_notice(1)
    for chat_id in (42, 43):
        texts = [c.params["text"] for c in bot.sent(chat_id)]
        assert len([t for t in texts if not t.startswith("⏳")]) == 1
        assert not texts[-1].startswith("⏳")  # the notice came first, the answer after it
    # Typing was renewed while the slow reply was written, and stopped once it was sent.
    assert max(len(bot.sent(42, "sendChatAction")), len(bot.sent(43, "sendChatAction"))) >= 3
    count = len(server.calls_to("sendChatAction"))
    await asyncio.sleep(0.6)
    assert len(server.calls_to("sendChatAction")) == count


def slow_words(count: int, token_delay: float) -> FakeModel:
    """A model that writes ``count`` words, one every ``token_delay`` seconds."""
    words = " ".join(f"word{i}" for i in range(count))
    return FakeModel(reply_fn=lambda system, history: words, token_delay=token_delay)


def words_of(model: FakeModel) -> str:
    assert model.reply_fn is not None
    return model.reply_fn("", [])


NEUTRAL_BADGE = "😐 neutral 0.80"  # FakeModel's mood for texts without mood words


async def test_slow_reply_is_streamed_by_default_and_finished_in_place(
    launch: Launch, server: FakeTelegramServer
):
    model = slow_words(30, token_delay=0.1)  # ~3 s: longer than the default 2 s stream delay
    bot = await launch(model)
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "take your time")
    await server.wait_for("editMessageText", timeout=10, where=lambda c: "word29" in c.params["text"])
    await server.quiet()
    [preview] = bot.sent(42)
    assert preview.params["text"].startswith(NEUTRAL_BADGE + "\nword0")
    assert preview.params["text"].endswith(" …")
    final = server.message(42, preview.result["message_id"])
    assert final is not None
    assert final["text"] == f"{NEUTRAL_BADGE}\n{words_of(model)}"


async def test_slow_reply_edits_are_paced_and_never_repeat_the_text(
    launch: Launch, server: FakeTelegramServer
):
    model = slow_words(45, token_delay=0.08)  # ~3.6 s; the engine passes text on once a second
    bot = await launch(
        model, adapter_options={"stream_delay": 0.3, "edit_interval": 1.5, "typing_interval": 0.2}
    )
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "take your time")
    await server.wait_for("editMessageText", timeout=10, where=lambda c: "word44" in c.params["text"])
    await server.quiet()
    [preview] = bot.sent(42)
    edits = bot.sent(42, "editMessageText")
    assert len(edits) >= 2  # at least one while writing, and the finished reply
    assert all(call.ok for call in server.calls_to("editMessageText", ok_only=False))  # none refused
    shown = [preview, *edits]
    texts = [call.params["text"] for call in shown]
    assert all(text.startswith(NEUTRAL_BADGE + "\n") for text in texts)
    assert all(text.endswith(" …") for text in texts[:-1])
    assert all(before != after for before, after in itertools.pairwise(texts))
    in_progress = shown[:-1]  # the finished reply is put in place as soon as it is ready
    assert all(after.at - before.at >= 1.4 for before, after in itertools.pairwise(in_progress))
    assert texts[-1] == f"{NEUTRAL_BADGE}\n{words_of(model)}"
    # "typing…" stayed on until the finished text was in place.
    last_typing = bot.sent(42, "sendChatAction")[-1]
    assert preview.at < last_typing.at and edits[-2].at < last_typing.at


async def test_streamed_reply_longer_than_one_message_continues_in_new_messages(
    launch: Launch, server: FakeTelegramServer
):
    sentence = "This sentence is part of a very long answer. "
    long_text = (sentence * 200).strip()  # ~9,000 characters: three messages
    model = FakeModel(reply_fn=lambda system, history: long_text, token_delay=0.002)
    bot = await launch(model, adapter_options={"stream_delay": 0.3})
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "tell me everything")
    await bot.replies(42, 3, timeout=10)
    await server.quiet()
    sent = bot.sent(42)
    assert len(sent) == 3 and sent[0].params["text"].endswith(" …")
    first = server.message(42, sent[0].result["message_id"])
    assert first is not None
    texts = [first["text"]] + [call.params["text"] for call in sent[1:]]
    assert all(len(text) <= 4096 for text in texts)
    assert strip_badge(texts[0]) + "".join(texts[1:]) == long_text


async def test_with_stream_replies_off_a_slow_reply_arrives_once(launch: Launch, server: FakeTelegramServer):
    model = slow_words(20, token_delay=0.1)
    bot = await launch(model, adapter_options={"stream_delay": 0.3}, stream_replies=False)
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "take your time")
    [reply] = await bot.replies(42, timeout=10)
    await server.quiet()
    assert len(bot.sent(42)) == 1 and not server.calls_to("editMessageText")
    assert reply.params["text"] == f"{NEUTRAL_BADGE}\n{words_of(model)}"


async def test_when_the_final_edit_fails_the_reply_is_sent_anew(launch: Launch, server: FakeTelegramServer):
    model = slow_words(25, token_delay=0.1)
    bot = await launch(model, adapter_options={"stream_delay": 0.3})
    server.fail_next("editMessageText", 100, description="Bad Request: message to edit not found")
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "take your time")
    [preview, reply] = await bot.replies(42, 2, timeout=10)
    await server.quiet()
    assert preview.params["text"].endswith(" …")
    assert reply.params["text"] == f"{NEUTRAL_BADGE}\n{words_of(model)}"
    assert server.calls_to("editMessageText") and not bot.sent(42, "editMessageText")
    # The unfinished preview is removed, so only the complete reply stays in the chat.
    assert [m["text"] for m in server.sent_messages(42)] == [reply.params["text"]]


async def test_a_final_edit_whose_answer_is_lost_is_retried_harmlessly(
    launch: Launch, server: FakeTelegramServer
):
    model = slow_words(25, token_delay=0.1)
    options = {"stream_delay": 0.3, "edit_interval": 30.0, "network_backoff": 0.1}
    bot = await launch(model, adapter_options=options)
    server.drop_next("editMessageText", after_processing=True)  # done, but the answer never arrives
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "take your time")
    await server.wait_for("editMessageText", timeout=10, ok_only=False, where=lambda c: c.status == 400)
    await server.quiet()
    [preview] = bot.sent(42)
    edits = server.calls_to("editMessageText")
    assert [call.status for call in edits] == [0, 400]  # the repeat found the text already in place
    assert "not modified" in (edits[1].error or "")
    assert [m["text"] for m in server.sent_messages(42)] == [f"{NEUTRAL_BADGE}\n{words_of(model)}"]
    assert preview.result["message_id"] == server.sent_messages(42)[0]["message_id"]


async def test_in_groups_a_streamed_reply_is_edited_less_often(launch: Launch, server: FakeTelegramServer):
    model = slow_words(40, token_delay=0.08)
    options = {"stream_delay": 0.3, "edit_interval": 0.3, "group_edit_interval": 30.0}
    bot = await launch(model, adapter_options=options)
    alice = server.user(42, "Alice", "alice")
    group = server.group_chat(GROUP_ID)
    message = server.send_text(group, alice, f"@{BOT_USERNAME} take your time")
    await server.wait_for("editMessageText", timeout=10, where=lambda c: "word39" in c.params["text"])
    await server.quiet()
    [preview] = bot.sent(GROUP_ID)
    assert preview.params["reply_parameters"]["message_id"] == message["message_id"]
    assert len(bot.sent(GROUP_ID, "editMessageText")) == 1  # only the finished reply


# ---------------------------------------------------------------------- groups


async def test_group_messages_not_addressed_to_the_bot_are_ignored_and_not_stored(
    launch: Launch, server: FakeTelegramServer
):
    model = FakeModel(reply_fn=echo)
    bot = await launch(model)
    alice = server.user(42, "Alice", "alice")
    group = server.group_chat(GROUP_ID)
    server.send_text(group, alice, "hello everyone, nice weather today")
    server.send_text(group, alice, "@someone_else what do you think?")
    server.send_text(group, alice, "/help@other_bot")
    server.send_sticker(group, alice)
    await server.wait_consumed()
    await server.quiet()
    assert not server.calls_to("sendMessage")
    assert not server.calls_to("sendChatAction")
    assert await bot.user_id(42) is None
    assert not model.classify_inputs and not model.generate_inputs


async def test_group_mention_is_answered_with_the_mention_removed(launch: Launch, server: FakeTelegramServer):
    model = FakeModel(reply_fn=echo)
    bot = await launch(model)
    alice = server.user(42, "Alice", "alice")
    group = server.group_chat(GROUP_ID)
    message = server.send_text(group, alice, f"@{BOT_USERNAME} I feel sad today")
    [reply] = await bot.replies(GROUP_ID)
    assert strip_badge(reply.params["text"]) == "echo: I feel sad today"
    assert reply.params["text"].startswith("😟 negative")
    assert reply.params["reply_parameters"]["message_id"] == message["message_id"]
    assert model.classify_inputs == ["I feel sad today"]


async def test_group_reply_to_the_bot_and_addressed_commands_are_answered(
    launch: Launch, server: FakeTelegramServer
):
    bot = await launch(FakeModel(reply_fn=echo))
    alice = server.user(42, "Alice", "alice")
    group = server.group_chat(GROUP_ID)
    server.send_text(group, alice, f"hi @{BOT_USERNAME}")
    [first] = await bot.replies(GROUP_ID)
    bot_message = server.message(GROUP_ID, first.result["message_id"])
    assert bot_message is not None
    server.send_text(group, alice, "thanks, that helps", reply_to=bot_message)
    second = (await bot.replies(GROUP_ID, 2))[-1]
    assert strip_badge(second.params["text"]) == "echo: thanks, that helps"
    server.send_text(group, alice, f"/help@{BOT_USERNAME}")
    third = (await bot.replies(GROUP_ID, 3))[-1]
    assert "/mood" in third.params["text"]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "sent at once"])
async def test_in_a_forum_topic_every_part_and_typing_stay_in_that_topic(
    stream: bool, launch: Launch, server: FakeTelegramServer
):
    sentence = "This sentence is part of a very long answer. "
    long_text = (sentence * 200).strip()  # ~9,000 characters: three messages
    model = FakeModel(reply_fn=lambda system, history: long_text, token_delay=0.002)
    options: dict[str, Any] = {"typing_interval": 1.0}  # groups allow ~20 requests a minute
    options["stream_delay"] = 0.3 if stream else None
    bot = await launch(model, adapter_options=options)
    alice = server.user(42, "Alice", "alice")
    forum = server.group_chat(GROUP_ID, forum=True)
    server.send_text(forum, alice, f"@{BOT_USERNAME} tell me everything", topic=7)
    await bot.replies(GROUP_ID, 3, timeout=10)
    await server.quiet()
    sent = bot.sent(GROUP_ID)
    assert len(sent) == 3
    # Where Telegram put each message: without a thread id, parts after the first would be in General.
    stored = [server.message(GROUP_ID, call.result["message_id"]) for call in sent]
    assert [message and message.get("message_thread_id") for message in stored] == [7, 7, 7]
    typing = bot.sent(GROUP_ID, "sendChatAction")
    assert typing and all(call.params.get("message_thread_id") == "7" for call in typing)


async def test_outside_forums_no_thread_is_named(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo))
    alice = server.user(42, "Alice", "alice")
    group = server.group_chat(GROUP_ID)
    first = server.send_text(group, alice, f"hi @{BOT_USERNAME}")
    [reply] = await bot.replies(GROUP_ID)
    # In a supergroup, Telegram gives a reply the thread id of its reply thread, which is no topic.
    thread_reply = server.send_text(group, alice, f"@{BOT_USERNAME} and again", reply_to=first)
    thread_reply["message_thread_id"] = first["message_id"]
    second = (await bot.replies(GROUP_ID, 2))[-1]
    assert reply.ok and second.ok
    assert "message_thread_id" not in reply.params and "message_thread_id" not in second.params


async def test_two_people_in_one_group_have_separate_histories(launch: Launch, server: FakeTelegramServer):
    model = FakeModel(reply_fn=echo)
    bot = await launch(model)
    alice = server.user(42, "Alice", "alice")
    bob = server.user(43, "Bob", "bob")
    group = server.group_chat(GROUP_ID)
    said = [
        (alice, "I adopted a cat"),
        (bob, "my train was late again"),
        (alice, "she sleeps all day"),
        (bob, "and it rained"),
    ]
    for count, (person, text) in enumerate(said, start=1):
        server.send_text(group, person, f"@{BOT_USERNAME} {text}")
        await bot.replies(GROUP_ID, count)
    alice_history = [turn.content for turn in conversation(model.generate_inputs[2][1])]
    bob_history = [turn.content for turn in conversation(model.generate_inputs[3][1])]
    assert alice_history == ["I adopted a cat", "echo: I adopted a cat", "she sleeps all day"]
    assert bob_history == ["my train was late again", "echo: my train was late again", "and it rained"]
    for telegram_id, mine in ((42, "I adopted a cat"), (43, "my train was late again")):
        user_id = await bot.user_id(telegram_id)
        assert user_id is not None
        texts = [m.text for m in await bot.app.repository.messages_for_user(user_id)]
        assert mine in texts and len(texts) == 4


async def test_private_data_asked_for_in_a_group_goes_to_a_private_chat(
    launch: Launch, server: FakeTelegramServer
):
    bot = await launch()
    alice, alice_chat = alice_in_private(server)
    bob = server.user(43, "Bob", "bob")
    group = server.group_chat(GROUP_ID)
    server.send_text(alice_chat, alice, "I am glad")  # Alice has started the bot
    await bot.replies(42)
    server.send_text(group, alice, f"/export@{BOT_USERNAME}")
    await server.wait_for("sendDocument", 2, where=lambda c: c.params["chat_id"] == "42")
    [note] = await bot.replies(GROUP_ID)
    assert note.params["text"] == PRIVATE_SENT_NOTE
    server.send_text(group, bob, f"/export@{BOT_USERNAME}")  # Bob never opened a private chat
    second = (await bot.replies(GROUP_ID, 2))[-1]
    assert f"@{BOT_USERNAME}" in second.params["text"] and "Start" in second.params["text"]
    await server.quiet()
    assert all(c.params["chat_id"] == "42" for c in server.calls_to("sendDocument", ok_only=True))


# ---------------------------------------------------------------------- allowlists and recovery


async def test_allowlisted_users_only(launch: Launch, server: FakeTelegramServer):
    model = FakeModel(reply_fn=echo)
    bot = await launch(model, telegram_allowed_user_ids=frozenset({"42"}))
    stranger = server.user(77, "Mallory", "mallory")
    server.send_text(server.private_chat(stranger), stranger, "let me in")
    server.send_sticker(server.private_chat(stranger), stranger)
    await server.wait_consumed()
    await server.quiet()
    assert not server.calls_to("sendMessage") and not server.calls_to("sendChatAction")
    assert await bot.user_id(77) is None
    assert not model.classify_inputs
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "it's me")
    [reply] = await bot.replies(42)
    assert strip_badge(reply.params["text"]) == "echo: it's me"


async def test_allowlisted_chats_only(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo), telegram_allowed_chat_ids=frozenset({str(GROUP_ID)}))
    alice = server.user(42, "Alice", "alice")
    other_group = server.group_chat(-1009999999999, "Elsewhere")
    server.send_text(other_group, alice, f"@{BOT_USERNAME} hello from elsewhere")
    await server.wait_consumed()
    await server.quiet()
    assert not server.calls_to("sendMessage")
    assert await bot.user_id(42) is None
    server.send_text(server.group_chat(GROUP_ID), alice, f"@{BOT_USERNAME} hello")
    [reply] = await bot.replies(GROUP_ID)
    assert strip_badge(reply.params["text"]) == "echo: hello"


async def test_a_message_left_pending_by_a_crash_is_answered_after_start(
    launch: Launch, server: FakeTelegramServer
):
    _alice, chat = alice_in_private(server)
    server.register_chat(chat)

    async def leave_a_pending_message(app: App) -> None:
        user = await app.repository.ensure_user("telegram", "42", "Alice")
        stored_chat = await app.repository.ensure_chat("telegram", "42", True, user.id)
        await app.repository.add_message(user.id, stored_chat.id, "user", "I am happy you are back")

    bot = await launch(FakeModel(reply_fn=echo), prepare=leave_a_pending_message)
    [reply] = await bot.replies(42)
    assert strip_badge(reply.params["text"]) == "echo: I am happy you are back"


async def test_a_pending_message_from_a_forum_topic_is_answered_there_as_a_reply(
    launch: Launch, server: FakeTelegramServer
):
    alice = server.user(42, "Alice", "alice")
    forum = server.group_chat(GROUP_ID, forum=True)
    asked = server.send_text(forum, alice, f"@{BOT_USERNAME} tell me everything", topic=7, deliver=False)

    async def leave_it_pending(app: App) -> None:  # as a crash after storing it would
        user = await app.repository.ensure_user("telegram", "42", "Alice")
        chat = await app.repository.ensure_chat("telegram", str(GROUP_ID), False, user.id)
        await app.repository.add_message(
            user.id, chat.id, "user", "tell me everything", platform_message_id=str(asked["message_id"])
        )

    long_text = ("This sentence is part of a very long answer. " * 200).strip()  # three messages
    bot = await launch(FakeModel(reply_fn=lambda system, history: long_text), prepare=leave_it_pending)
    await bot.replies(GROUP_ID, 3, timeout=10)
    sent = bot.sent(GROUP_ID)
    assert sent[0].params["reply_parameters"]["message_id"] == asked["message_id"]
    stored = [server.message(GROUP_ID, call.result["message_id"]) for call in sent]
    assert [message and message.get("message_thread_id") for message in stored] == [7, 7, 7]


# ---------------------------------------------------------------------- the real model


@pytest.mark.model
async def test_the_bundled_model_answers_through_telegram(launch: Launch, server: FakeTelegramServer):
    cache_dir = Settings(_env_file=None).cache_dir  # type: ignore[call-arg]  # reuse the converted model
    bot = await launch(None, startup_timeout=1800, cache_dir=cache_dir)
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "I had a wonderful day at the beach with my friends!")
    [reply] = await bot.replies(42, timeout=600)
    body = strip_badge(reply.params["text"])
    assert body.strip()
    assert len(reply.params["text"]) <= 4096
    user_id = await bot.user_id(42)
    assert user_id is not None
    # The first message may be the reply's preview: the mood entry commits with the finished reply.
    deadline = asyncio.get_running_loop().time() + 600
    while not await bot.app.repository.moods(user_id):
        assert asyncio.get_running_loop().time() < deadline, "the reply never finished"
        await asyncio.sleep(0.2)
    await server.quiet(2.0)
    assert len(await bot.app.repository.moods(user_id)) == 1


# ---------------------------------------------------------------------- failures and shutdown


async def test_a_refused_reply_ends_in_an_apology_not_silence(launch: Launch, server: FakeTelegramServer):
    bot = await launch(FakeModel(reply_fn=echo))
    server.fail_next("sendMessage", code=400, description="Bad Request: can't parse entities: injected")
    alice, chat = alice_in_private(server)
    server.send_text(chat, alice, "hello?")
    await bot.replies(42)
    await server.quiet()
    attempts = server.calls_to("sendMessage")
    assert [call.status for call in attempts] == [400, 200]
    assert attempts[1].params["text"] == MoodmateError.user_message


@contextlib.asynccontextmanager
async def bare_adapter(
    tmp_path: Path, server: FakeTelegramServer, model: FakeModel, **options: Any
) -> AsyncIterator[tuple[App, TelegramAdapter]]:
    """The app and a started Telegram adapter without the runner, so a test can stop the adapter."""
    settings = make_settings(tmp_path, telegram_token=server.token, telegram_api_base_url=server.base_url)
    app = await bootstrap(settings, model=model)
    await app.start()
    adapter = TelegramAdapter(settings, app.engine, **options)
    try:
        await adapter.start()
        yield app, adapter
    finally:
        await adapter.stop()
        await app.stop()


async def test_stop_does_not_wait_for_a_slow_reply_which_stays_pending(
    tmp_path: Path, server: FakeTelegramServer
):
    model = FakeModel(reply_delay=1.5)
    async with bare_adapter(tmp_path, server, model, stop_grace=0.2, typing_interval=0.1) as (app, adapter):
        alice, chat = alice_in_private(server)
        server.send_text(chat, alice, "this will take a while")
        await server.wait_for("sendChatAction")
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await adapter.stop()
        assert time.monotonic() - started < 1.2
        actions = len(server.calls_to("sendChatAction"))
        await asyncio.sleep(0.3)
        assert len(server.calls_to("sendChatAction")) == actions  # the typing loop ended too
        assert not server.calls_to("sendMessage")
        pending = await app.repository.pending_messages()
        assert [item.message.text for item in pending] == ["this will take a while"]


async def test_a_reply_cut_off_by_stop_leaves_no_unfinished_preview(
    tmp_path: Path, server: FakeTelegramServer
):
    model = slow_words(60, token_delay=0.1)
    async with bare_adapter(tmp_path, server, model, stop_grace=0.3, stream_delay=0.2) as (app, adapter):
        alice, chat = alice_in_private(server)
        server.send_text(chat, alice, "tell me a long story")
        [preview] = await server.wait_for("sendMessage", timeout=5)
        await adapter.stop()
        assert server.message(42, preview.result["message_id"]) is None  # deleted
        pending = await app.repository.pending_messages()
        assert [item.message.text for item in pending] == ["tell me a long story"]  # answered after a restart


# ---------------------------------------------------------------------- crisis safety (issue 27)

CRISIS_RESOURCES = "Call or text 988 (Suicide & Crisis Lifeline, US)\nText HOME to 741741"


async def test_a_crisis_message_in_private_gets_the_fixed_reply_with_the_resources(
    launch: Launch, server: FakeTelegramServer
):
    from bot.safety.replies import crisis_reply

    model = FakeModel(reply_fn=echo, token_delay=0.05)
    bot = await launch(model, crisis_resources=CRISIS_RESOURCES)
    alice, chat = alice_in_private(server)
    text = "I don't want to live anymore. I've been thinking about ending it."
    server.send_text(chat, alice, text)
    [reply] = await bot.replies(42)
    await server.quiet()
    assert reply.params["text"] == crisis_reply(text, CRISIS_RESOURCES)
    assert CRISIS_RESOURCES in reply.params["text"]
    assert "echo" not in reply.params["text"] and not model.generate_inputs  # no generated text
    assert not server.calls_to("editMessageText")  # nothing streamed
    assert len(bot.sent(42)) == 1
    assert (await bot.app.repository.stats()).crisis_replies == 1

    server.send_text(chat, alice, "this homework is killing me")  # a look-alike: an ordinary reply
    second = (await bot.replies(42, 2))[-1]
    assert strip_badge(second.params["text"]) == "echo: this homework is killing me"
    assert (await bot.app.repository.stats()).crisis_replies == 1


async def test_a_crisis_message_in_a_group_is_answered_there_and_sent_nowhere_else(
    launch: Launch, server: FakeTelegramServer
):
    from bot.safety.replies import crisis_reply

    model = FakeModel(reply_fn=echo)
    bot = await launch(model, admin_ids="telegram:7")
    alice = server.user(42, "Alice", "alice")
    group = server.group_chat(GROUP_ID)
    message = server.send_text(group, alice, f"@{BOT_USERNAME} 我真的不想活了，活着太累了。")
    [reply] = await bot.replies(GROUP_ID)
    await server.quiet()
    assert reply.params["text"] == crisis_reply("我真的不想活了，活着太累了。", None)
    assert "https://findahelpline.com" in reply.params["text"]
    assert reply.params["reply_parameters"]["message_id"] == message["message_id"]
    assert not model.generate_inputs
    sent_to = {call.params.get("chat_id") for call in server.calls_to("sendMessage")}
    assert sent_to == {str(GROUP_ID)}  # not moved to a private chat, not sent to the admin
