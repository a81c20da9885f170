"""Every message answered exactly once and logged once: stops, crashes, failures, several processes.

Each scenario runs on a SQLite file and on a real PostgreSQL (skipped, with one line, where no
server answers): the same engine and repository code on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event

from adapters.runner import serve
from bot.bootstrap import App, bootstrap
from bot.errors import MoodmateError, PlatformError
from bot.model.fake import FakeModel
from bot.records import MessageStatus
from bot.types import IncomingMessage, Platform, Reply, ReplyKind
from tests.conftest import make_settings, message
from tests.databases import FILE_BACKENDS, database_url


@pytest.fixture(params=FILE_BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as url:
        yield url


async def _start(tmp_path: Path, url: str, model: FakeModel, **settings: object) -> App:
    app = await bootstrap(make_settings(tmp_path, database_url=url, **settings), model=model)
    await app.start()
    return app


async def _rows(app: App, user: str = "u1", platform: str = "console") -> tuple[list, list, list]:
    """(user messages, assistant replies, mood entries) of one user."""
    record = await app.repository.get_user(platform, user)
    assert record is not None
    stored = await app.repository.messages_for_user(record.id)
    return (
        [m for m in stored if m.role == "user"],
        [m for m in stored if m.role == "assistant"],
        await app.repository.moods(record.id),
    )


class Deliveries:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, ReplyKind]] = []

    async def __call__(self, incoming: IncomingMessage, reply: Reply) -> None:
        self.sent.append((incoming.text, reply.text, reply.kind))


async def test_stop_mid_reply_then_restart_answers_and_logs_once(tmp_path: Path, db_url: str) -> None:
    model = FakeModel(reply_delay=0.5)
    app = await _start(tmp_path, db_url, model)
    answering = asyncio.create_task(app.engine.handle(message("what a wonderful morning")))
    while not model.generate_inputs:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)  # well into the reply
    answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answering
    await app.stop()

    again = await _start(tmp_path, db_url, FakeModel())
    try:
        deliveries = Deliveries()
        report = await again.engine.recover_pending(deliveries)
        assert report.answered == 1 and len(deliveries.sent) == 1
        [incoming], replies, moods = await _rows(again)
        assert incoming.status == MessageStatus.ANSWERED
        assert len(replies) == 1 and len(moods) == 1
    finally:
        await again.stop()


async def test_stop_during_a_recovered_send_resends_the_stored_reply(tmp_path: Path, db_url: str) -> None:
    crashed = await _start(tmp_path, db_url, FakeModel())
    user = await crashed.repository.ensure_user("console", "u1", "Ada")
    chat = await crashed.repository.ensure_chat("console", "c1", True, user.id)
    await crashed.repository.add_message(user.id, chat.id, "user", "left by a crash, happy")
    await crashed.stop()

    async def stopped_mid_send(incoming: IncomingMessage, reply: Reply) -> None:
        raise asyncio.CancelledError  # the process is stopped while the platform call runs

    first = await _start(tmp_path, db_url, FakeModel())
    with pytest.raises(asyncio.CancelledError):
        await first.engine.recover_pending(stopped_mid_send)
    [incoming], [stored_reply], moods = await _rows(first)
    assert incoming.status == "replied" and len(moods) == 1  # not "answered": the send never finished
    await first.stop()

    model = FakeModel()
    second = await _start(tmp_path, db_url, model)
    try:
        deliveries = Deliveries()
        report = await second.engine.recover_pending(deliveries)
        assert (report.resent, report.answered) == (1, 0)
        assert [text for _, text, _ in deliveries.sent] == [stored_reply.text]
        assert model.generate_inputs == [] and model.classify_inputs == []  # re-sent, never regenerated
        [incoming], replies, moods = await _rows(second)
        assert incoming.status == MessageStatus.ANSWERED and len(replies) == 1 and len(moods) == 1
    finally:
        await second.stop()


async def test_a_crash_between_reply_and_delivery_resends_after_the_lease(
    tmp_path: Path, db_url: str
) -> None:
    """Live traffic: replied, then the process dies before the adapter confirms the send."""
    crashed = await _start(tmp_path, db_url, FakeModel(), claim_lease_seconds=1)
    [reply] = await crashed.engine.handle(message("I'm tired"))
    crashed.engine._held.clear()  # the process dies: no renewal, no release
    await crashed.worker.stop()
    await crashed.repository.close()

    model = FakeModel()
    restarted = await _start(tmp_path, db_url, model, claim_lease_seconds=1)
    try:
        deliveries = Deliveries()
        early = await restarted.engine.recover_pending(deliveries)
        assert early.resent == 0  # the dead process's lease still holds
        await asyncio.sleep(1.2)
        report = await restarted.engine.recover_pending(deliveries)
        assert report.resent == 1 and [text for _, text, _ in deliveries.sent] == [reply.text]
        assert model.generate_inputs == []
        [incoming], replies, moods = await _rows(restarted)
        assert incoming.status == MessageStatus.ANSWERED and len(replies) == 1 and len(moods) == 1
    finally:
        await restarted.stop()


async def test_a_failure_between_reply_and_status_leaves_no_half_answered_message(
    tmp_path: Path, db_url: str
) -> None:
    app = await _start(tmp_path, db_url, FakeModel())
    failed_once: list[str] = []

    @event.listens_for(app.repository._engine.sync_engine, "before_cursor_execute")  # type: ignore[attr-defined]
    def disk_full(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE messages SET status") and not failed_once:
            failed_once.append(statement)
            raise OSError("disk full")

    [reply] = await app.engine.handle(message("so sad and tired today"))
    assert failed_once and reply.kind is ReplyKind.ERROR
    await app.stop()

    again = await _start(tmp_path, db_url, FakeModel())
    try:
        await again.engine.recover_pending(Deliveries())
        [incoming], replies, moods = await _rows(again)
        # All or nothing: a stored reply only with a replied/answered message, each at most once.
        assert len(replies) <= 1 and len(moods) <= 1
        assert (len(replies) == 1) == (incoming.status in (MessageStatus.REPLIED, MessageStatus.ANSWERED))
        assert len(moods) == len(replies)
    finally:
        await again.stop()


async def test_a_second_instance_never_answers_what_the_first_is_answering(
    tmp_path: Path, db_url: str
) -> None:
    first_model = FakeModel(reply_delay=2.0)
    first = await _start(tmp_path, db_url, first_model, claim_lease_seconds=1)
    second_model = FakeModel()
    second = await _start(tmp_path, db_url, second_model, claim_lease_seconds=1)
    try:
        answering = asyncio.create_task(first.engine.handle(message("a long one, please")))
        while not first_model.generate_inputs:
            await asyncio.sleep(0.005)
        deliveries = Deliveries()
        for _ in range(4):  # through more than one lease: the first renews its claim
            report = await second.engine.recover_pending(deliveries)
            assert deliveries.sent == [] and report.answered == 0 and report.failed == 0
            await asyncio.sleep(0.4)
        [reply] = await answering
        await first.engine.delivered(reply)
        assert deliveries.sent == [] and second_model.generate_inputs == []
        [incoming], replies, moods = await _rows(first)
        assert incoming.status == MessageStatus.ANSWERED and len(replies) == 1 and len(moods) == 1
    finally:
        await first.stop()
        await second.stop()


class StartingAdapter:
    """A platform adapter for serve(): ``on_start`` runs when it starts; records deliveries."""

    def __init__(self, on_start=None, *, start_delay: float = 0.0, refuse: set[str] | None = None) -> None:  # type: ignore[no-untyped-def]
        self.on_start = on_start
        self.start_delay = start_delay
        self.refuse = refuse or set()
        self.delivered: list[tuple[str, str]] = []
        self.lost = asyncio.Event()

    async def start(self) -> None:
        if self.on_start is not None:
            self.on_start()
        await asyncio.sleep(self.start_delay)

    async def stop(self) -> None:
        pass

    async def admits(self, incoming: IncomingMessage) -> bool:
        return incoming.user_id not in self.refuse

    async def deliver(self, incoming: IncomingMessage, reply: Reply) -> None:
        self.delivered.append((incoming.user_id, reply.text))

    async def wait_lost(self) -> MoodmateError:
        await self.lost.wait()
        return PlatformError("gone")


async def test_live_traffic_during_a_slow_second_adapter_start_is_answered_once(
    tmp_path: Path, db_url: str
) -> None:
    """Telegram polls (and answers) while Discord still logs in; recovery then runs."""
    model = FakeModel(reply_delay=0.6)
    app = await bootstrap(make_settings(tmp_path, database_url=db_url), model=model)
    live: list[asyncio.Task[list[Reply]]] = []
    telegram_message = message("hello from telegram", user="7", chat="7", platform=Platform.TELEGRAM)

    def poll() -> None:
        live.append(asyncio.create_task(app.engine.handle(telegram_message)))

    telegram = StartingAdapter(poll)
    discord = StartingAdapter(start_delay=0.2)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, {Platform.TELEGRAM: telegram, Platform.DISCORD: discord}, stop))
    while not live:
        await asyncio.sleep(0.01)
    [reply] = await live[0]
    await asyncio.sleep(0.3)  # recovery has run by now
    assert telegram.delivered == []  # recovery sent nothing: the live path answers it
    [incoming], answers, moods = await _rows(app, "7", "telegram")
    assert len(answers) == 1 and len(moods) == 1 and len(model.generate_inputs) == 1
    await app.engine.delivered(reply)  # the adapter's send went through
    [incoming], _, _ = await _rows(app, "7", "telegram")
    stop.set()
    await asyncio.wait_for(server, 10)
    assert incoming.status == MessageStatus.ANSWERED and telegram.delivered == []


async def test_recovery_checks_the_allowlists_like_live_traffic(tmp_path: Path, db_url: str) -> None:
    setup = await _start(tmp_path, db_url, FakeModel())
    for user in ("friend", "stranger"):
        record = await setup.repository.ensure_user("telegram", user, user)
        chat = await setup.repository.ensure_chat("telegram", user, True, record.id)
        await setup.repository.add_message(record.id, chat.id, "user", f"hi from {user}")
    await setup.stop()

    model = FakeModel()
    app = await bootstrap(make_settings(tmp_path, database_url=db_url), model=model)
    telegram = StartingAdapter(refuse={"stranger"})
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, {Platform.TELEGRAM: telegram}, stop))
    for _ in range(300):
        [stranger], stranger_replies, _ = await _rows(app, "stranger", "telegram")
        if telegram.delivered and stranger.status != MessageStatus.PENDING:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(server, 10)
    assert [user for user, _ in telegram.delivered] == ["friend"]
    assert stranger.status == MessageStatus.REFUSED and stranger_replies == []
    assert [turns[-1].content for _, turns in model.generate_inputs] == ["hi from friend"]


async def test_concurrent_first_starts_create_the_schema_once(tmp_path: Path, db_url: str) -> None:
    from storage import open_repository

    repositories = [open_repository(db_url) for _ in range(8)]
    try:
        await asyncio.gather(*(repository.initialize() for repository in repositories))
        user = await repositories[0].ensure_user("console", "me", "me")
        assert (await repositories[-1].get_user("console", "me")) == user
    finally:
        for repository in repositories:
            await repository.close()


async def test_the_adapters_admit_at_recovery_whom_their_allowlists_admit(tmp_path: Path) -> None:
    from adapters.discord import DiscordAdapter
    from adapters.telegram import TelegramAdapter

    settings = make_settings(
        tmp_path, telegram_allowed_user_ids="5", discord_allowed_channel_ids="900", discord_token="x"
    )
    telegram = TelegramAdapter(settings, engine=None)  # type: ignore[arg-type]
    friend = message("hi", user="5", chat="5", platform=Platform.TELEGRAM)
    stranger = message("hi", user="6", chat="6", platform=Platform.TELEGRAM)
    assert await telegram.admits(friend) and not await telegram.admits(stranger)

    discord = DiscordAdapter(settings, engine=None)  # type: ignore[arg-type]
    allowed_dm = message("hi", user="1", chat="900", platform=Platform.DISCORD)
    other_dm = message("hi", user="1", chat="901", platform=Platform.DISCORD)
    unseen_channel = message("hi", user="1", chat="902", platform=Platform.DISCORD, private=False)
    assert await discord.admits(allowed_dm)
    assert not await discord.admits(other_dm) and not await discord.admits(unseen_channel)


async def test_a_message_delivered_twice_by_the_platform_is_answered_once(
    tmp_path: Path, db_url: str
) -> None:
    """A webhook retried (the first answer was lost) reaching the other process, or an update fetched
    again after a crash."""
    from dataclasses import replace

    first = await _start(tmp_path, db_url, FakeModel(reply_delay=0.3))
    second = await _start(tmp_path, db_url, FakeModel())
    try:
        incoming = replace(message("hello twice"), message_id="4711")
        answers = await asyncio.gather(first.engine.handle(incoming), second.engine.handle(incoming))
        assert sorted(len(replies) for replies in answers) == [0, 1]
        _, replies, moods = await _rows(first)
        assert len(replies) == 1 and len(moods) == 1
    finally:
        await first.stop()
        await second.stop()
