"""The Discord adapter end to end: real discord.py, moodmate's real startup path, a fake Discord."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest

from adapters.discord import DiscordAdapter
from adapters.discord.client import MoodmateClient, MoodmateShardedClient, Shards, build_client
from adapters.discord.formatting import split_for_discord
from bot.bootstrap import App, bootstrap
from bot.errors import ConfigurationError
from bot.model.fake import FakeModel
from bot.presentation import mood_badge
from bot.types import IncomingMessage, Mood, MoodLabel, Platform, Reply, ReplyKind
from tests.conftest import conversation, make_settings
from tests.fakes.discord_server import FakeDiscordServer, FakeGuild, FakeUser, RecordedRequest
from tests.rows import count_rows

DEFAULT_BASE = discord.http.Route.BASE
DEFAULT_GATEWAY = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


@dataclass
class World:
    guild: FakeGuild
    other_guild: FakeGuild
    alice: FakeUser
    bob: FakeUser
    outsider: FakeUser

    @property
    def general(self) -> str:
        return self.guild.channels["general"]

    @property
    def random(self) -> str:
        return self.guild.channels["random"]


@dataclass
class Bot:
    app: App
    adapter: DiscordAdapter
    model: FakeModel


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscordServer]:
    async with FakeDiscordServer() as server:
        yield server


@pytest.fixture
def world(fake: FakeDiscordServer) -> World:
    guild = fake.add_guild("Cafe", channels=("general", "random", "lounge"))
    other = fake.add_guild("Elsewhere", channels=("main",))
    return World(
        guild=guild,
        other_guild=other,
        alice=fake.add_user("alice", guilds=(guild,), global_name="Alice"),
        bob=fake.add_user("bob", guilds=(guild,)),
        outsider=fake.add_user("outsider", guilds=(other,)),
    )


@pytest.fixture
async def start_bot(fake: FakeDiscordServer, world: World, tmp_path: Path) -> AsyncIterator[StartBot]:
    running: list[tuple[App, DiscordAdapter]] = []

    async def start(model: FakeModel | None = None, **overrides: Any) -> Bot:
        values: dict[str, Any] = {
            "discord_token": fake.token,
            "discord_api_base_url": fake.api_base_url,
            "discord_gateway_url": fake.gateway_url,
        }
        values.update(overrides)
        settings = make_settings(tmp_path, **values)
        model = model or FakeModel()
        app = await bootstrap(settings, model=model)
        await app.start()
        adapter = DiscordAdapter(settings, app.engine)
        running.append((app, adapter))
        await adapter.start()
        return Bot(app, adapter, model)

    yield start
    for app, adapter in reversed(running):
        await adapter.stop()
        await app.stop()


def message_posts(fake: FakeDiscordServer, channel_id: str | None = None) -> list[RecordedRequest]:
    return fake.sent_messages(channel_id)


async def replies_in(fake: FakeDiscordServer, channel_id: str, count: int = 1) -> list[RecordedRequest]:
    return await fake.wait_for(lambda r: r.is_message_post and r.channel_id == channel_id, count=count)


async def stored_texts(app: App, user: FakeUser) -> list[str | None]:
    record = await app.repository.get_user("discord", user.id)
    if record is None:
        return []
    return [row.text for row in await app.repository.messages_for_user(record.id)]


# --- conversations -----------------------------------------------------------------------------


async def test_dm_gets_a_reply_with_its_mood(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    await fake.send_dm(world.alice, "I had an awful, terrible day")

    [reply] = await replies_in(fake, fake.dm_channel_id(world.alice))

    negative = Mood(MoodLabel.NEGATIVE, 0.91)
    assert reply.content is not None
    assert reply.content.splitlines()[0] == mood_badge(negative)
    assert "I hear you: I had an awful, terrible day" in reply.content
    user = await bot.app.repository.get_user("discord", world.alice.id)
    assert user is not None and user.display_name == "Alice"
    moods = await bot.app.repository.moods(user.id)
    assert [mood.label for mood in moods] == ["negative"]
    assert await stored_texts(bot.app, world.alice) == [
        "I had an awful, terrible day",
        reply.content.split("\n", 1)[1],
    ]


async def test_a_send_whose_answer_was_lost_is_retried_without_a_duplicate(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    channel = fake.dm_channel_id(world.alice)
    fake.lose_answers("POST", f"/channels/{channel}/messages")
    await fake.send_dm(world.alice, "hello there")
    first, retry = await replies_in(fake, channel, count=2)
    # The same nonce (with enforce_nonce) on the retry: Discord returns the message it already made.
    assert first.payload["nonce"] == retry.payload["nonce"] and retry.payload["enforce_nonce"] is True
    assert retry.response["id"] == first.response["id"]
    made = [
        m for m in fake.messages.values() if m["channel_id"] == channel and m["author"]["id"] == fake.bot.id
    ]
    assert len(made) == 1


async def test_a_dm_refused_with_403_is_not_followed_by_an_apology_there(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    channel = fake.dm_channel_id(world.alice)
    fake.fail(
        "POST",
        f"/channels/{channel}/messages",
        status=403,
        code=50007,
        message="Cannot send messages to this user",
    )
    await fake.send_dm(world.alice, "hello there")

    def posted_here(request: RecordedRequest) -> bool:
        return request.is_message_post and request.channel_id == channel

    for _ in range(100):  # wait_for counts successful requests only
        if any(posted_here(r) for r in fake.requests):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert [r.status for r in fake.requests if posted_here(r)] == [403]  # an apology would meet it too


async def test_typing_indicator_runs_before_the_reply(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot(FakeModel(reply_delay=0.3))
    channel = fake.dm_channel_id(world.alice)
    await fake.send_dm(world.alice, "hello there")
    await replies_in(fake, channel)

    paths = [r.path for r in fake.requests if r.channel_id == channel]
    assert paths[0] == f"/channels/{channel}/typing"
    assert paths.index(f"/channels/{channel}/messages") > 0


async def test_server_message_without_mention_is_neither_answered_nor_stored(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    await fake.send_message(world.general, world.bob, "just chatting with friends, I love this place")
    # A barrier: this one is addressed, so once it is answered the first was long since handled.
    await fake.send_message(world.random, world.alice, f"<@{fake.bot.id}> are you there?")
    await replies_in(fake, world.random)

    assert message_posts(fake, world.general) == []
    assert [r for r in fake.requests if r.channel_id == world.general] == []  # not even typing
    assert await bot.app.repository.get_user("discord", world.bob.id) is None
    assert all(
        "love this place" not in turn.content for _, history in bot.model.generate_inputs for turn in history
    )
    assert "just chatting with friends, I love this place" not in bot.model.classify_inputs
    stats = await bot.app.repository.stats()
    assert (stats.users, stats.messages) == (1, 2)


async def test_mention_is_answered_as_a_reply_without_the_mention_markup(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    sent = await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> I feel great today")

    [reply] = await replies_in(fake, world.general)

    assert reply.content is not None and reply.content.startswith("🙂 positive 0.90\n")
    assert reply.payload["message_reference"]["message_id"] == int(sent["id"])
    assert reply.payload["allowed_mentions"] == {"parse": [], "replied_user": False}
    assert bot.model.classify_inputs == ["I feel great today"]
    assert bot.model.generate_inputs[0][1][-1].content == "I feel great today"


async def test_role_mention_and_reply_to_the_bot_count_as_addressed(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    bot_role = next(role for role in world.guild.roles if role.bot_id == fake.bot.id)
    await fake.send_message(world.general, world.alice, f"<@&{bot_role.id}> hello via the role")
    [first] = await replies_in(fake, world.general)
    answer = fake.messages[_sent_id(fake, first)]

    await fake.send_message(world.general, world.alice, "and a reply without a mention", reply_to=answer)
    await replies_in(fake, world.general, count=2)

    assert bot.model.classify_inputs == ["hello via the role", "and a reply without a mention"]


async def test_reply_to_someone_else_is_not_addressed(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    human = await fake.send_message(world.general, world.bob, "bob says hi")
    await fake.send_message(world.general, world.alice, "alice answers bob", reply_to=human)
    await fake.send_message(world.random, world.alice, f"<@{fake.bot.id}> barrier")
    await replies_in(fake, world.random)

    assert message_posts(fake, world.general) == []
    assert bot.model.classify_inputs == ["barrier"]


async def test_free_channels_answer_without_a_mention(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot(discord_free_channel_ids=world.guild.channels["lounge"])
    await fake.send_message(world.guild.channels["lounge"], world.alice, "anyone around?")
    [reply] = await replies_in(fake, world.guild.channels["lounge"])
    assert reply.content is not None and "anyone around?" in reply.content


async def test_messages_from_bots_are_ignored(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    other_bot = fake.add_user("helperbot", guilds=(world.guild,), bot=True)
    await fake.send_message(world.general, other_bot, f"<@{fake.bot.id}> beep boop")
    await fake.send_message(world.general, fake.bot, f"<@{fake.bot.id}> talking to myself")
    await fake.send_dm(world.alice, "barrier")
    await replies_in(fake, fake.dm_channel_id(world.alice))

    assert message_posts(fake, world.general) == []
    assert bot.model.classify_inputs == ["barrier"]


async def test_histories_are_per_user_per_channel(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    mention = f"<@{fake.bot.id}>"
    await fake.send_message(world.general, world.alice, f"{mention} alice secret one")
    await replies_in(fake, world.general)
    await fake.send_message(world.general, world.bob, f"{mention} bob speaking")
    await replies_in(fake, world.general, count=2)
    await fake.send_message(world.random, world.alice, f"{mention} alice elsewhere")
    await replies_in(fake, world.random)
    await fake.send_message(world.general, world.alice, f"{mention} alice again")
    await replies_in(fake, world.general, count=3)

    histories = [[turn.content for turn in conversation(history)] for _, history in bot.model.generate_inputs]
    assert histories[1][-1] == "bob speaking" and not any("alice" in turn for turn in histories[1])
    assert histories[2] == ["alice elsewhere"]
    assert histories[3][0] == "alice secret one" and histories[3][-1] == "alice again"
    assert not any("bob" in turn or "elsewhere" in turn for turn in histories[3])


# --- long replies and mentions -------------------------------------------------------------------


def long_reply() -> str:
    prose = " ".join(f"Sentence number {i} keeps this reply going for a while." for i in range(25))
    code = "\n".join(f"    total_{i} = compute_value({i}) + offset_{i}  # step {i}" for i in range(55))
    tail = " ".join(f"After the code, thought {i} follows naturally." for i in range(12))
    text = f"{prose}\n\n```python\n{code}\n```\n\n{tail}"
    assert 4900 <= len(text) <= 5200, len(text)
    return text


async def test_a_5000_character_reply_is_split_with_balanced_code_fences(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    original = long_reply()
    await start_bot(FakeModel(reply_fn=lambda system, history: original))
    await fake.send_dm(world.alice, "tell me a long story")
    channel = fake.dm_channel_id(world.alice)
    await fake.wait_for(lambda r: r.is_message_post and r.channel_id == channel, count=3)
    await fake.send_dm(world.bob, "barrier")  # all parts of the first reply are sent by then
    await replies_in(fake, fake.dm_channel_id(world.bob), count=3)

    # The chat as the user sees it: a reply slower than the stream delay is first posted as a preview
    # and later edited into its first part.
    parts = [
        message["content"]
        for message in fake.messages.values()
        if message["channel_id"] == channel and message["author"]["id"] == fake.bot.id
    ]
    assert len(parts) >= 3
    assert all(len(part) <= 2000 for part in parts)
    assert all(part.count("```") % 2 == 0 for part in parts)
    # Remove the markers the adapter added: a closing fence ending a part, reopened by the next one.
    restored = parts[0]
    carried = 0
    for previous, part in itertools.pairwise(parts):
        reopened = re.match(r"```python\n", part)
        if reopened and previous.endswith("\n```"):
            restored = restored[: -len("```")]
            part = part[reopened.end() :]
            carried += 1
        restored += part
    assert restored == "😐 neutral 0.80\n" + original
    assert carried >= 1  # a cut did fall inside the code block


async def test_model_output_cannot_ping_anyone(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    role = world.guild.roles[1]
    output = f"@everyone @here <@&{role.id}> <@{world.bob.id}> look at this!"
    await start_bot(FakeModel(reply_fn=lambda system, history: output))
    await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> say something loud")
    [reply] = await replies_in(fake, world.general)

    assert reply.content is not None and output in reply.content
    mentions = reply.payload["allowed_mentions"]
    assert mentions["parse"] == []
    assert not mentions.get("users") and not mentions.get("roles")
    assert mentions.get("replied_user") is False


# --- slash commands and buttons ---------------------------------------------------------------------


def interaction_requests(fake: FakeDiscordServer, interaction: dict[str, Any]) -> list[RecordedRequest]:
    token = interaction["token"]
    return [r for r in fake.requests if token in r.path]


async def test_slash_commands_are_synced_at_start(fake: FakeDiscordServer, start_bot: StartBot) -> None:
    await start_bot()
    [sync] = [r for r in fake.requests if r.method == "PUT"]
    assert sync.path == f"/applications/{fake.application_id}/commands"
    names = {command["name"] for command in sync.payload}
    assert {"mood", "reset", "forget", "export", "help", "timezone", "moodlog"} <= names
    mood = next(command for command in sync.payload if command["name"] == "mood")
    assert [choice["value"] for choice in mood["options"][0]["choices"]] == ["7d", "30d", "90d", "all"]


async def test_mood_slash_command_is_deferred_then_answered_ephemerally(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> what a wonderful morning")
    await replies_in(fake, world.general)

    interaction = await fake.invoke_command("mood", world.alice, world.general, {"period": "30d"})
    [followup] = await fake.wait_for(lambda r: r.path.startswith(f"/webhooks/{fake.application_id}/"))

    callback, *later = interaction_requests(fake, interaction)
    assert later == [followup]  # deferred first, then one follow-up
    assert callback.path == f"/interactions/{interaction['id']}/{interaction['token']}/callback"
    assert callback.payload == {"type": 5, "data": {"flags": 64}}
    assert followup.method == "POST" and followup.payload["flags"] & 64
    assert "last 30 days" in followup.payload["content"]
    assert "1 positive" in followup.payload["content"]
    assert followup.payload["allowed_mentions"] == {"parse": []}
    assert [file.filename for file in followup.files] == ["mood-30d.png"]
    assert followup.files[0].data.startswith(b"\x89PNG")
    assert message_posts(fake, world.general)[1:] == []  # nothing public in the channel
    assert bot.model.classify_inputs == ["what a wonderful morning"]


async def test_a_slash_command_in_a_stale_form_gets_an_answer(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    # A choice the client cached from an older version of the command.
    interaction = await fake.invoke_command("mood", world.alice, world.general, {"period": "14d"})
    [callback] = await fake.wait_for(lambda r: interaction["token"] in r.path)
    assert callback.payload["type"] == 4 and callback.payload["data"]["flags"] == 64
    assert "/help" in callback.payload["data"]["content"]
    assert bot.model.classify_inputs == []


async def test_slash_command_in_a_dm_is_not_ephemeral(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    interaction = await fake.invoke_command("help", world.alice, fake.dm_channel_id(world.alice))
    [followup] = await fake.wait_for(lambda r: r.path.startswith(f"/webhooks/{fake.application_id}/"))
    callback = interaction_requests(fake, interaction)[0]
    assert callback.payload == {"type": 5}
    assert not followup.payload.get("flags")
    assert "/mood" in followup.payload["content"]


async def test_export_sends_csv_and_json_files(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    await fake.send_dm(world.alice, "a good day")
    await replies_in(fake, fake.dm_channel_id(world.alice))
    await fake.invoke_command("export", world.alice, fake.dm_channel_id(world.alice))
    [followup] = await fake.wait_for(lambda r: r.path.startswith(f"/webhooks/{fake.application_id}/"))

    names = [file.filename for file in followup.files]
    assert [name.rsplit(".", 1)[1] for name in names] == ["csv", "json"]
    assert followup.files[0].field_name == "files[0]" and followup.files[1].field_name == "files[1]"
    assert b"a good day" in followup.files[0].data and b"a good day" in followup.files[1].data


async def test_forget_deletes_everything_after_the_button_is_pressed(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    await fake.send_dm(world.alice, "remember this, I am happy")
    await replies_in(fake, fake.dm_channel_id(world.alice))
    user = await bot.app.repository.get_user("discord", world.alice.id)
    assert user is not None
    assert (await count_rows(bot.app.repository, user.id))["messages"] == 2

    await fake.invoke_command("forget", world.alice, world.general)
    [question] = await fake.wait_for(lambda r: r.path.startswith(f"/webhooks/{fake.application_id}/"))
    assert question.payload["flags"] & 64
    buttons = [c for row in question.payload["components"] for c in row["components"]]
    assert [button["custom_id"] for button in buttons] == ["/forget confirm", "/forget cancel"]
    assert (await count_rows(bot.app.repository, user.id))["messages"] == 2  # nothing deleted yet

    press = await fake.click_button(question.response, "/forget confirm", world.alice)
    [edit] = await fake.wait_for(lambda r: r.method == "PATCH" and press["token"] in r.path)

    assert interaction_requests(fake, press)[0].payload == {"type": 6}
    assert edit.path.endswith("/messages/@original")
    assert "deleted" in edit.payload["content"]
    assert edit.payload["components"] == []
    assert await count_rows(bot.app.repository, user.id) == {
        "users": 0,
        "chats": 0,
        "messages": 0,
        "mood_entries": 0,
    }
    assert await bot.app.repository.get_user("discord", world.alice.id) is None


# --- allowlists ---------------------------------------------------------------------------------


async def test_guild_allowlist_is_enforced_before_the_engine(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot(discord_allowed_guild_ids=world.other_guild.id)
    mention = f"<@{fake.bot.id}>"
    await fake.send_message(world.general, world.alice, f"{mention} hello from the wrong server")
    interaction = await fake.invoke_command("mood", world.alice, world.general)
    await fake.wait_for(lambda r: interaction["token"] in r.path, count=2)
    await fake.send_dm(world.alice, "a DM from someone outside the allowed server")
    await fake.send_dm(world.outsider, "a DM from a member of the allowed server")
    await replies_in(fake, fake.dm_channel_id(world.outsider))
    main = world.other_guild.channels["main"]
    await fake.send_message(main, world.outsider, f"{mention} hello from the right server")
    await replies_in(fake, main)

    assert message_posts(fake, world.general) == []
    assert message_posts(fake, fake.dm_channel_id(world.alice)) == []
    assert await bot.app.repository.get_user("discord", world.alice.id) is None
    # Acknowledged first (the check may have to ask Discord, which allows 3 s), then refused privately.
    acknowledgement, refusal = interaction_requests(fake, interaction)
    assert acknowledgement.payload == {"type": 5, "data": {"flags": 64}}
    assert refusal.payload["flags"] & 64 and "isn't enabled" in refusal.payload["content"]
    assert bot.model.classify_inputs == [
        "a DM from a member of the allowed server",
        "hello from the right server",
    ]


async def test_channel_allowlist_is_enforced(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot(discord_allowed_channel_ids=world.random)
    mention = f"<@{fake.bot.id}>"
    await fake.send_message(world.general, world.alice, f"{mention} not here")
    await fake.send_dm(world.alice, "nor here")
    await fake.send_message(world.random, world.alice, f"{mention} but here")
    await replies_in(fake, world.random)

    assert message_posts(fake, world.general) == message_posts(fake, fake.dm_channel_id(world.alice)) == []
    assert bot.model.classify_inputs == ["but here"]


# --- rate limits, queueing, delivery ------------------------------------------------------------


@pytest.mark.parametrize("is_global", [False, True])
async def test_a_429_on_send_is_retried_not_dropped(
    fake: FakeDiscordServer, world: World, start_bot: StartBot, is_global: bool
) -> None:
    await start_bot()
    fake.rate_limit("POST", r"/channels/\d+/messages", times=2, retry_after=0.05, is_global=is_global)
    await fake.send_dm(world.alice, "please do not drop me")
    [reply] = await replies_in(fake, fake.dm_channel_id(world.alice))

    posts = [r for r in fake.requests if r.is_message_post]
    assert [r.status for r in posts] == [429, 429, 200]
    assert reply.content is not None and "please do not drop me" in reply.content


async def test_a_long_rate_limit_beyond_discord_py_retries_is_still_delivered(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    # discord.py gives up after five tries; the adapter's own retry carries the reply through.
    fake.rate_limit("POST", r"/channels/\d+/messages", times=6, retry_after=0.01)
    await fake.send_dm(world.alice, "still here?")
    await replies_in(fake, fake.dm_channel_id(world.alice))
    statuses = [r.status for r in fake.requests if r.is_message_post]
    assert statuses == [429] * 6 + [200]


async def test_a_waiting_message_shows_its_queue_position(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot(FakeModel(mood_delay=0.1, reply_delay=0.3))
    people = (world.alice, world.bob, world.outsider)
    for person in people:  # three at once on a one-call-at-a-time model: someone has to wait
        await fake.send_dm(person, f"hello from {person.username}")
    await fake.wait_for(lambda r: r.is_message_post and "I hear you" in (r.content or ""), count=3)

    notices = [r for r in fake.sent_messages() if "ahead of yours" in (r.content or "")]
    assert notices
    for notice in notices:
        assert re.search(r"answering \d+ messages? ahead of yours", notice.content or "")
        [deleted] = await fake.wait_for(
            lambda r, n=notice: r.method == "DELETE" and r.channel_id == n.channel_id
        )
        assert deleted.path.endswith(f"/messages/{_sent_id(fake, notice)}")
        answers = [r for r in fake.sent_messages(notice.channel_id) if "I hear you" in (r.content or "")]
        assert len(answers) == 1
        assert fake.requests.index(notice) < fake.requests.index(answers[0]) < fake.requests.index(deleted)


async def test_deliver_sends_a_recovered_reply_to_the_original_channel(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    earlier = fake.create_message(world.general, world.alice, "earlier message")
    recovered = IncomingMessage(
        platform=Platform.DISCORD,
        chat_id=world.general,
        user_id=world.alice.id,
        display_name="Alice",
        text="earlier message",
        chat_is_private=False,
        message_id=earlier["id"],
    )
    await bot.adapter.deliver(recovered, Reply("Sorry I missed this @everyone", kind=ReplyKind.NOTICE))
    [sent] = message_posts(fake, world.general)
    assert sent.content == "*Alice:*\nSorry I missed this @everyone"
    assert sent.payload["allowed_mentions"] == {"parse": [], "replied_user": False}
    assert str(sent.payload["message_reference"]["message_id"]) == earlier["id"]


# --- startup ------------------------------------------------------------------------------------


async def test_startup_uses_the_configured_endpoints_and_restores_them(
    fake: FakeDiscordServer, start_bot: StartBot
) -> None:
    bot = await start_bot()
    assert fake.connection_queries == [{"v": "10", "encoding": "json", "compress": "zlib-stream"}]
    assert fake.identify_payloads[0]["intents"] & (1 << 15)  # message content
    assert not fake.identify_payloads[0]["intents"] & (1 << 1)  # no members intent
    assert [r.path for r in fake.requests[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    await bot.adapter.stop()
    assert discord.http.Route.BASE == DEFAULT_BASE
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == DEFAULT_GATEWAY


async def test_gateway_is_discovered_from_the_api_when_not_configured(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot(discord_gateway_url=None, discord_api_base_url=fake.api_base_url.removesuffix("/api/v10"))
    assert any(r.path == "/gateway/bot" for r in fake.requests)
    await fake.send_dm(world.alice, "hi")
    await replies_in(fake, fake.dm_channel_id(world.alice))


async def test_a_bad_token_is_one_clear_sentence(fake: FakeDiscordServer, start_bot: StartBot) -> None:
    with pytest.raises(ConfigurationError, match=r"^Discord rejected DISCORD_TOKEN \(401 Unauthorized\); "):
        await start_bot(discord_token="not-the-token")
    assert discord.http.Route.BASE == DEFAULT_BASE


async def test_a_refused_message_content_intent_is_one_clear_sentence(
    fake: FakeDiscordServer, start_bot: StartBot
) -> None:
    fake.privileged_intents_enabled = False
    with pytest.raises(ConfigurationError) as caught:
        await start_bot()
    assert "Message Content Intent" in str(caught.value) and "developer portal" in str(caught.value)
    assert str(caught.value).count(". ") == 0  # one sentence
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == DEFAULT_GATEWAY


def _sent_id(fake: FakeDiscordServer, request: RecordedRequest) -> str:
    """The id the fake gave the message created by ``request``."""
    return str(request.response["id"])


async def test_a_dropped_gateway_is_resumed(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    await fake.close_gateway(4000)
    await fake.wait_ready()
    assert len(fake.resume_payloads) == 1 and fake.identify_count == 1
    await fake.send_dm(world.alice, "still there after the hiccup?")
    await replies_in(fake, fake.dm_channel_id(world.alice))


async def test_a_gateway_that_refuses_the_token_while_running_is_reported_as_lost(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    watch = asyncio.create_task(bot.adapter.wait_lost())
    await fake.close_gateway(4000)  # discord.py resumes after a hiccup like this one...
    await fake.wait_ready()
    assert not watch.done()
    await fake.close_gateway(4004)  # ...but not after "authentication failed": it gives up
    error = await asyncio.wait_for(watch, 10)
    assert isinstance(error, ConfigurationError) and "DISCORD_TOKEN" in str(error)


async def test_a_private_answer_asked_for_in_a_server_goes_to_dms(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> /export csv")
    [note] = await replies_in(fake, world.general)
    [dm] = await replies_in(fake, fake.dm_channel_id(world.alice))

    assert any(r.method == "POST" and r.path == "/users/@me/channels" for r in fake.requests)
    assert dm.content is not None and dm.content.startswith("Here is your data")
    assert [file.filename.rsplit(".", 1)[1] for file in dm.files] == ["csv"]
    assert note.content is not None and "DM" in note.content and not note.files


async def test_text_commands_in_a_dm_get_files(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    await fake.send_dm(world.alice, "/export json")
    [reply] = await replies_in(fake, fake.dm_channel_id(world.alice))
    assert [file.filename.rsplit(".", 1)[1] for file in reply.files] == ["json"]
    assert reply.payload["attachments"] == [{"id": 0, "filename": reply.files[0].filename}]


async def test_a_reply_to_an_older_bot_message_is_recognised_without_referenced_message(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    older = fake.create_message(world.general, fake.bot, "something I said before a restart")
    await fake.send_message(
        world.general, world.alice, "replying to that", reply_to=older, include_referenced_message=False
    )
    await replies_in(fake, world.general)
    assert any(
        r.method == "GET" and r.path == f"/channels/{world.general}/messages/{older['id']}"
        for r in fake.requests
    )
    assert bot.model.classify_inputs == ["replying to that"]


async def test_commands_work_when_callbacks_have_no_response_body(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    fake.callback_bodies = False
    interaction = await fake.invoke_command("help", world.alice, world.general)
    [followup] = await fake.wait_for(lambda r: r.path.startswith(f"/webhooks/{fake.application_id}/"))
    assert interaction_requests(fake, interaction)[0].status == 204
    assert followup.payload["flags"] & 64 and "/mood" in followup.payload["content"]


async def test_a_429_on_a_follow_up_is_retried(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    await start_bot()
    fake.rate_limit("POST", r"/webhooks/\d+/[^/]+", times=1, retry_after=0.05)
    await fake.invoke_command("help", world.alice, world.general)
    [followup] = await fake.wait_for(lambda r: r.path.startswith(f"/webhooks/{fake.application_id}/"))
    statuses = [r.status for r in fake.requests if r.path.startswith("/webhooks/")]
    assert statuses == [429, 200]
    assert "/mood" in followup.payload["content"]


async def test_stop_lets_a_reply_in_progress_finish(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot(FakeModel(reply_delay=0.5))
    await fake.send_dm(world.alice, "answer me before you go")
    await fake.wait_for(lambda r: r.path.endswith("/typing"))
    await bot.adapter.stop()

    [reply] = message_posts(fake, fake.dm_channel_id(world.alice))
    assert reply.content is not None and "answer me before you go" in reply.content
    assert not fake.connected


async def test_a_reply_cut_off_by_stop_leaves_no_unfinished_preview(
    fake: FakeDiscordServer, world: World, start_bot: StartBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.discord.adapter.STOP_GRACE_SECONDS", 0.3)
    bot = await start_bot(FakeModel(reply_fn=lambda system, history: slow_reply(60), token_delay=0.1))
    bot.adapter.stream_delay = 0.2
    await fake.send_dm(world.alice, "tell me a long story")
    [preview] = await replies_in(fake, fake.dm_channel_id(world.alice))
    await bot.adapter.stop()

    assert _sent_id(fake, preview) not in fake.messages  # deleted
    pending = await bot.app.repository.pending_messages()
    assert [item.message.text for item in pending] == ["tell me a long story"]  # answered after a restart


# --- progressive display -------------------------------------------------------------------------

SLOW_WORDS = 26
SLOW_TOKEN_DELAY = 0.15  # about four seconds of writing, well past the 1.5 s before a reply shows


def slow_reply(words: int = SLOW_WORDS, *, lead: str = "Let me think") -> str:
    return " ".join([lead, *(f"word{i}" for i in range(words))]) + "."


def edits_of(fake: FakeDiscordServer, post: RecordedRequest) -> list[RecordedRequest]:
    return fake.message_edits(post.channel_id, _sent_id(fake, post))


async def test_a_slow_reply_is_shown_while_written_then_completed_in_place(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    text = slow_reply()
    await start_bot(FakeModel(token_delay=SLOW_TOKEN_DELAY, reply_fn=lambda system, history: text))
    channel = fake.dm_channel_id(world.alice)
    await fake.send_dm(world.alice, "tell me something")
    final = "😐 neutral 0.80\n" + text
    await fake.wait_for(lambda r: r.is_message_edit and r.content == final, timeout=15)

    [post] = message_posts(fake, channel)
    assert post.content is not None and post.content.startswith("😐 neutral 0.80\nLet me think")
    assert post.content.endswith(" …") and post.content != final
    assert post.payload["allowed_mentions"] == {"parse": []}
    edits = edits_of(fake, post)
    assert edits[-1].content == final
    assert all((edit.content or "").endswith(" …") for edit in edits[:-1])
    assert fake.messages[_sent_id(fake, post)]["content"] == final
    # Edits are spaced out (the final one excepted: it comes as soon as the reply is ready).
    times = [r.received_at for r in [post, *edits[:-1]]]
    assert all(later - earlier >= 1.4 for earlier, later in itertools.pairwise(times))
    # Posting a message hides "typing…" on Discord, so it is shown again until the reply is complete.
    order = [r for r in fake.requests if r.channel_id == channel]
    typing_after_post = [r for r in order[order.index(post) :] if r.path.endswith("/typing")]
    assert typing_after_post and order.index(typing_after_post[0]) < order.index(edits[-1])


async def test_a_fast_reply_is_one_message_without_edits(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot()
    assert bot.app.settings.stream_replies  # on by default
    await fake.send_dm(world.alice, "quick question")
    await replies_in(fake, fake.dm_channel_id(world.alice))
    await bot.adapter.stop()  # everything the adapter was going to do is done

    [post] = message_posts(fake)
    assert post.content == "😐 neutral 0.80\nI hear you: quick question. Tell me more?"
    assert [r for r in fake.requests if r.method in ("PATCH", "DELETE")] == []


async def test_without_stream_replies_a_slow_reply_is_sent_once_complete(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    text = slow_reply()
    bot = await start_bot(
        FakeModel(token_delay=SLOW_TOKEN_DELAY, reply_fn=lambda system, history: text),
        stream_replies=False,
    )
    await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> take your time")
    await fake.wait_for(lambda r: r.is_message_post, timeout=15)
    await bot.adapter.stop()

    [post] = message_posts(fake)
    assert post.content == "😐 neutral 0.80\n" + text
    assert [r for r in fake.requests if r.method == "PATCH"] == []


async def test_partial_text_cannot_ping_anyone_either(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    role = world.guild.roles[1]
    text = slow_reply(lead=f"@everyone @here <@&{role.id}> <@{world.bob.id}> listen")
    bot = await start_bot(FakeModel(token_delay=SLOW_TOKEN_DELAY, reply_fn=lambda system, history: text))
    sent = await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> shout it")
    final = "😐 neutral 0.80\n" + text
    await fake.wait_for(lambda r: r.is_message_edit and r.content == final, timeout=15)
    await bot.adapter.stop()

    [post] = message_posts(fake, world.general)
    assert post.content is not None and post.content.endswith(" …") and "@everyone @here" in post.content
    assert post.payload["allowed_mentions"] == {"parse": [], "replied_user": False}
    assert post.payload["message_reference"]["message_id"] == int(sent["id"])
    edits = edits_of(fake, post)
    assert len(edits) >= 2  # at least one while writing, then the final text
    assert all("@everyone @here" in (edit.content or "") for edit in edits)
    for request in edits:
        mentions = request.payload["allowed_mentions"]
        assert mentions["parse"] == [] and not mentions.get("users") and not mentions.get("roles")


async def test_when_editing_fails_the_final_reply_is_sent_anew(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    text = slow_reply()
    bot = await start_bot(FakeModel(token_delay=SLOW_TOKEN_DELAY, reply_fn=lambda system, history: text))
    fake.fail("PATCH", r"/channels/\d+/messages/\d+", times=100)  # as if a moderator deleted it
    sent = await fake.send_message(world.general, world.alice, f"<@{fake.bot.id}> are you there")
    final = "😐 neutral 0.80\n" + text
    await fake.wait_for(lambda r: r.is_message_post and r.content == final, timeout=15)
    await bot.adapter.stop()

    in_progress, complete = message_posts(fake, world.general)
    assert in_progress.content is not None and in_progress.content.endswith(" …")
    assert [r.status for r in fake.requests if r.method == "PATCH"][-1] == 404
    assert complete.payload["message_reference"]["message_id"] == int(sent["id"])
    assert complete.payload["allowed_mentions"] == {"parse": [], "replied_user": False}
    # The unfinished text does not linger next to the complete one.
    assert any(r.method == "DELETE" and r.message_id == _sent_id(fake, in_progress) for r in fake.requests)
    assert _sent_id(fake, in_progress) not in fake.messages


async def test_a_long_streamed_reply_ends_exactly_as_it_would_be_sent(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    original = long_reply()
    await start_bot(FakeModel(token_delay=0.003, reply_fn=lambda system, history: original))
    channel = fake.dm_channel_id(world.alice)
    await fake.send_dm(world.alice, "tell me a long story")
    expected = split_for_discord("😐 neutral 0.80\n" + original)
    assert len(expected) >= 3
    await fake.wait_for(lambda r: r.is_message_post and r.content == expected[-1], timeout=20)

    first, *rest = message_posts(fake, channel)
    edits = edits_of(fake, first)
    assert first.content is not None and first.content.endswith(" …")
    assert all(len(r.content or "") <= 2000 for r in [first, *edits])
    assert edits[-1].content == expected[0]
    assert [fake.messages[_sent_id(fake, first)]["content"]] + [r.content for r in rest] == expected


async def test_the_queue_notice_goes_once_the_waiting_reply_shows(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    bot = await start_bot(FakeModel(token_delay=0.1, reply_fn=lambda system, history: slow_reply(20)))
    bot.adapter.stream_delay = bot.adapter.edit_interval = 0.5  # the knobs, turned down for speed
    await fake.send_dm(world.alice, "first")
    await fake.wait_for(lambda r: r.is_message_post)  # alice's reply is being written
    await fake.send_dm(world.bob, "second")
    bob = fake.dm_channel_id(world.bob)
    final = "😐 neutral 0.80\n" + slow_reply(20)
    await fake.wait_for(
        lambda r: r.is_message_edit and r.content == final and r.channel_id == bob, timeout=15
    )

    notice, in_progress = message_posts(fake, bob)
    assert "ahead of yours" in (notice.content or "") and (in_progress.content or "").endswith(" …")
    [deleted] = [r for r in fake.requests if r.method == "DELETE" and r.channel_id == bob]
    assert deleted.message_id == _sent_id(fake, notice)
    [*_, final_edit] = edits_of(fake, in_progress)
    assert fake.requests.index(in_progress) < fake.requests.index(deleted) < fake.requests.index(final_edit)


async def test_a_process_identifies_as_its_shard_of_the_bot(
    fake: FakeDiscordServer, start_bot: StartBot
) -> None:
    """Discord then sends this process only that shard's guilds (the fake does not split them)."""
    bot = await start_bot(discord_shard_count=2, discord_shard_ids="1")
    assert fake.identify_payloads[0]["shard"] == [1, 2]
    assert bot.adapter.client.shard_id == 1 and bot.adapter.client.shard_count == 2
    await bot.adapter.stop()


async def test_a_process_can_run_several_shards_of_the_bot() -> None:
    class Handlers:
        async def on_setup(self, client: MoodmateClient) -> None: ...

        async def on_message(self, message: discord.Message) -> None: ...

        async def on_action(self, interaction: discord.Interaction, command: str) -> None: ...

        async def on_slash_command(self, interaction: discord.Interaction, text: str) -> None: ...

    client = build_client(Handlers(), Shards(count=3, ids=(0, 2)))
    assert isinstance(client, MoodmateShardedClient)
    assert client.shard_ids == [0, 2] and client.shard_count == 3
    assert client.intents.message_content


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"discord_shard_ids": "0"}, "needs DISCORD_SHARD_COUNT"),
        ({"discord_shard_count": 2, "discord_shard_ids": "2"}, "below DISCORD_SHARD_COUNT"),
        ({"discord_shard_count": 2, "discord_shard_ids": "one"}, "shard numbers"),
    ],
)
def test_bad_shard_settings_are_one_sentence(tmp_path: Path, overrides: dict, names: str) -> None:  # type: ignore[type-arg]
    from adapters.discord.client import shards_from_settings

    with pytest.raises(ConfigurationError, match=names):
        shards_from_settings(make_settings(tmp_path, **overrides))
    assert shards_from_settings(make_settings(tmp_path, discord_shard_count=3)).ids == (0, 1, 2)  # type: ignore[union-attr]


# --- crisis safety (issue 27) ------------------------------------------------------------------


async def test_a_crisis_dm_and_a_crisis_mention_get_the_fixed_reply_where_they_were_said(
    fake: FakeDiscordServer, world: World, start_bot: StartBot
) -> None:
    from bot.safety.replies import crisis_reply

    resources = "Samaritans (UK and Ireland): call 116 123"
    bot = await start_bot(crisis_resources=resources)
    await fake.send_dm(world.alice, "everyone would be better off without me")
    [dm] = await replies_in(fake, fake.dm_channel_id(world.alice))
    assert dm.content == crisis_reply("everyone would be better off without me", resources)

    sent = await fake.send_message(world.general, world.bob, f"<@{fake.bot.id}> I wrote goodbye letters")
    [reply] = await replies_in(fake, world.general)
    assert reply.content == crisis_reply("I wrote goodbye letters", resources)
    assert reply.payload["message_reference"]["message_id"] == int(sent["id"])
    assert not bot.model.generate_inputs
    assert not message_posts(fake, fake.dm_channel_id(world.bob))  # nothing moved to Bob's DMs
    assert (await bot.app.repository.stats()).crisis_replies == 2

    await fake.send_dm(world.alice, "how do I kill a process in linux")
    ordinary = (await replies_in(fake, fake.dm_channel_id(world.alice), 2))[-1]
    assert ordinary.content is not None and "I hear you: how do I kill a process" in ordinary.content
