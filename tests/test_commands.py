"""Core commands, answered the same way for every platform."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bot.bootstrap import App
from bot.commands import parse_command
from bot.types import Platform, ReplyKind
from tests.conftest import conversation, message
from tests.rows import count_rows


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ("/mood", "mood", ""),
        ("/mood@moodmate_bot 30d", "mood", "30d"),
        ("  /Export json ", "export", "json"),
        ("/timezone Europe/Berlin", "timezone", "Europe/Berlin"),
    ],
)
def test_parse_command(text: str, name: str, args: str) -> None:
    parsed = parse_command(text)
    assert parsed is not None and (parsed.name, parsed.args) == (name, args)


@pytest.mark.parametrize("text", ["hello /mood", "/", "// comment", "/ mood", "path/to"])
def test_non_commands(text: str) -> None:
    assert parse_command(text) is None


async def test_start_and_help_say_what_is_stored(app: App) -> None:
    [start] = await app.engine.handle(message("/start"))
    assert start.kind is ReplyKind.COMMAND and start.mood is None
    assert "mood log" in start.text and "/moodlog off" in start.text
    [help_reply] = await app.engine.handle(message("/help"))
    for name in ("/mood", "/reset", "/forget", "/export", "/timezone", "/moodlog"):
        assert name in help_reply.text
    [crisis_line] = [line for line in help_reply.text.splitlines() if "crisis" in line]
    assert "not a crisis service" in crisis_line and "https://findahelpline.com" in crisis_line


async def test_commands_are_not_sent_to_the_model(app: App, fake_model) -> None:  # type: ignore[no-untyped-def]
    await app.engine.handle(message("/help"))
    await app.engine.handle(message("/mood"))
    assert fake_model.classify_inputs == [] and fake_model.generate_inputs == []


async def test_unknown_command_points_to_help(app: App) -> None:
    [reply] = await app.engine.handle(message("/dance"))
    assert "/help" in reply.text


async def test_mood_summary_counts_the_week(app: App) -> None:
    [empty] = await app.engine.handle(message("/mood"))
    assert empty.attachments == ()
    for text in ("I love this", "great news, so happy", "I'm exhausted and sad", "the bus is at nine"):
        await app.engine.handle(message(text))
    [summary] = await app.engine.handle(message("/mood 7d"))
    assert summary.private
    assert "4" in summary.text
    assert summary.attachments and summary.attachments[0].mime_type == "image/png"
    assert summary.attachments[0].content.startswith(b"\x89PNG")
    [bad] = await app.engine.handle(message("/mood fortnight"))
    assert "7d" in bad.text


async def test_reset_forgets_conversation_but_keeps_moods(app: App, fake_model) -> None:  # type: ignore[no-untyped-def]
    await app.engine.handle(message("remember the blue door"))
    await app.engine.handle(message("/reset"))
    await app.engine.handle(message("what did I say?"))
    _system, history = fake_model.generate_inputs[-1]
    assert [t.content for t in conversation(history)] == ["what did I say?"]
    user = await app.repository.get_user("console", "u1")
    assert user is not None and len(await app.repository.moods(user.id)) == 2


async def test_forget_needs_confirmation_then_deletes_everything(app: App) -> None:
    await app.engine.handle(message("I love my cat", chat="dm"))
    await app.engine.handle(message("hello group", chat="g", private=False))
    user = await app.repository.get_user("console", "u1")
    assert user is not None

    [premature] = await app.engine.handle(message("/forget confirm"))
    assert "first" in premature.text
    assert (await count_rows(app.repository, user.id))["messages"] == 4

    [ask] = await app.engine.handle(message("/forget"))
    assert [a.command for a in ask.actions] == ["/forget confirm", "/forget cancel"]
    [cancelled] = await app.engine.handle(message("/forget cancel"))
    assert "nothing" in cancelled.text.lower()
    assert (await count_rows(app.repository, user.id))["messages"] == 4

    await app.engine.handle(message("/forget"))
    [done] = await app.engine.handle(message("/forget confirm"))
    assert "deleted" in done.text
    assert await count_rows(app.repository, user.id) == {
        "users": 0,
        "chats": 0,
        "messages": 0,
        "mood_entries": 0,
    }


async def test_export_matches_the_stored_log(app: App) -> None:
    await app.engine.handle(message("what a great day"))
    await app.engine.handle(message("now I'm sad"))
    await app.engine.handle(message("other user's secret", user="someone-else"))
    [export] = await app.engine.handle(message("/export"))
    files = {a.filename.rsplit(".", 1)[1]: a for a in export.attachments}
    assert set(files) == {"csv", "json"}
    data = json.loads(files["json"].content)
    texts = [m["text"] for m in data["messages"]]
    assert "what a great day" in texts and "now I'm sad" in texts
    assert all("secret" not in (t or "") for t in texts)
    assert [m["label"] for m in data["moods"]] == ["positive", "negative"]
    rows = list(csv.DictReader(io.StringIO(files["csv"].content.decode("utf-8-sig"))))
    assert "other user's secret" not in files["csv"].content.decode()
    assert len(rows) >= 4
    [only_json] = await app.engine.handle(message("/export json"))
    assert [a.mime_type for a in only_json.attachments] == ["application/json"]


async def test_timezone_is_validated_and_stored(app: App) -> None:
    [bad] = await app.engine.handle(message("/timezone Mars/Olympus"))
    assert "Europe/Berlin" in bad.text or "Asia/Shanghai" in bad.text
    [ok] = await app.engine.handle(message("/timezone Asia/Shanghai"))
    assert "Asia/Shanghai" in ok.text
    user = await app.repository.get_user("console", "u1")
    assert user is not None and user.timezone == "Asia/Shanghai"
    [show] = await app.engine.handle(message("/timezone"))
    assert "Asia/Shanghai" in show.text


async def test_stats_needs_an_admin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.bootstrap import bootstrap
    from bot.model.fake import FakeModel
    from tests.conftest import make_settings

    app = await bootstrap(make_settings(tmp_path, admin_ids="telegram:42"), model=FakeModel())
    async with app:
        [refused] = await app.engine.handle(message("/stats", platform=Platform.TELEGRAM, user="7"))
        assert "only" in refused.text
        await app.engine.handle(message("I want to kill myself", platform=Platform.TELEGRAM, user="7"))
        [allowed] = await app.engine.handle(message("/stats", platform=Platform.TELEGRAM, user="42"))
        assert "users" in allowed.text and "crisis replies 1" in allowed.text
        assert "kill" not in allowed.text
