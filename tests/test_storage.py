"""One repository test suite, run against every storage backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.records import MessageStatus
from bot.repository import Repository
from storage import open_repository
from tests.databases import BACKENDS, database_url
from tests.rows import count_rows

SCHEMA_V2 = Path(__file__).parent / "data" / "schema_v2.sql"


@pytest.fixture(params=BACKENDS)
async def repository(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Repository]:
    async with database_url(request.param, tmp_path) as url:
        repo = open_repository(url)
        await repo.initialize()
        try:
            yield repo
        finally:
            await repo.close()


async def _user_and_chat(repo: Repository, user: str = "1", chat: str = "10", private: bool = True):
    u = await repo.ensure_user("telegram", user, "Ada")
    c = await repo.ensure_chat("telegram", chat, private, u.id)
    return u, c


async def test_ensure_user_is_idempotent_and_refreshes_name(repository: Repository) -> None:
    first = await repository.ensure_user("telegram", "1", "Ada")
    again = await repository.ensure_user("telegram", "1", "Ada L.")
    assert first.id == again.id
    assert again.display_name == "Ada L."
    assert again.timezone == "UTC" and again.mood_logging is True
    other_platform = await repository.ensure_user("discord", "1", "Ada")
    assert other_platform.id != first.id


async def test_history_is_per_user_per_chat_oldest_first(repository: Repository) -> None:
    ada, group = await _user_and_chat(repository, "1", "-100", private=False)
    bob = await repository.ensure_user("telegram", "2", "Bob")
    for user, text in ((ada, "ada one"), (bob, "bob one"), (ada, "ada two")):
        stored = await repository.add_message(user.id, group.id, "user", text)
        await repository.set_message_status(stored.id, MessageStatus.ANSWERED)
        await repository.add_message(
            user.id,
            group.id,
            "assistant",
            f"re: {text}",
            status=MessageStatus.ANSWERED,
            reply_to_id=stored.id,
        )
    history = await repository.history(ada.id, group.id, 10)
    assert [row.text for row in history] == ["ada one", "re: ada one", "ada two", "re: ada two"]
    assert [row.text for row in await repository.history(ada.id, group.id, 2)] == ["ada two", "re: ada two"]


async def test_a_message_keeps_its_platform_id_for_pending_recovery(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    stored = await repository.add_message(user.id, chat.id, "user", "hi", platform_message_id="4711")
    assert stored.platform_message_id == "4711"
    [pending] = await repository.pending_messages()
    assert pending.message.platform_message_id == "4711"


def _old_database(path: Path, version: int) -> None:
    """A SQLite file as the in-house migrator left it at ``version`` (1 or 2), with one pending message."""
    import sqlite3

    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA_V2.read_text())
        now = "2026-01-01 10:00:00.000000"
        old.execute("INSERT INTO users VALUES (1, 'telegram', '1', 'Ada', 'UTC', 1, ?)", (now,))
        old.execute("INSERT INTO chats VALUES (1, 'telegram', '10', 1, 1, ?)", (now,))
        old.execute(
            "INSERT INTO messages VALUES (1, 1, 1, 'user', ?, 'pending', 1, NULL, ?, NULL)",
            ("from before the upgrade", now),
        )
        for mood_id in (1, 2):  # the old bug: one message logged twice
            old.execute("INSERT INTO mood_entries VALUES (?, 1, 1, 1, 'negative', 0.8, ?)", (mood_id, now))
        if version == 2:  # and one update fetched twice after a crash: stored twice
            for message_id in (2, 3):
                old.execute(
                    "INSERT INTO messages VALUES (?, 1, 1, 'user', 'twice', 'answered', 1, NULL, ?, '77')",
                    (message_id, now),
                )
        if version == 1:
            old.execute("ALTER TABLE messages DROP COLUMN platform_message_id")
            old.execute("UPDATE schema_info SET version = 1")


@pytest.mark.parametrize("version", [1, 2])
async def test_an_old_database_is_migrated_in_place_and_keeps_its_messages(
    tmp_path: Path, version: int
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    _old_database(path, version)
    repository = open_repository(f"sqlite:///{path}")
    await repository.initialize()
    try:
        [pending] = await repository.pending_messages()
        assert (
            pending.message.text == "from before the upgrade" and pending.message.platform_message_id is None
        )
        ids = [m.platform_message_id for m in await repository.messages_for_user(pending.user.id)]
        assert ids == [None] if version == 1 else ids == [None, "77", None]
        added = await repository.add_message(
            pending.user.id, pending.chat.id, "user", "after", platform_message_id="9"
        )
        assert added.platform_message_id == "9"
        assert len(await repository.moods(pending.user.id)) == 1  # the duplicate entry is gone
    finally:
        await repository.close()
    with sqlite3.connect(path) as upgraded:
        assert upgraded.execute("SELECT version FROM schema_info").fetchone() == (2,)
        assert upgraded.execute("SELECT version_num FROM alembic_version").fetchone() == ("0004",)
    again = open_repository(f"sqlite:///{path}")  # a second start changes nothing
    await again.initialize()
    await again.close()


async def test_pending_and_failed_messages_stay_out_of_history(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    await repository.add_message(user.id, chat.id, "user", "still pending")
    failed = await repository.add_message(user.id, chat.id, "user", "failed one")
    await repository.set_message_status(failed.id, MessageStatus.FAILED)
    assert await repository.history(user.id, chat.id, 10) == []
    pending = await repository.pending_messages()
    assert [item.message.text for item in pending] == ["still pending"]
    assert pending[0].user.platform_user_id == "1" and pending[0].chat.platform_chat_id == "10"


async def test_reset_history_keeps_moods(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    stored = await repository.add_message(user.id, chat.id, "user", "hello", status=MessageStatus.ANSWERED)
    await repository.add_mood(user.id, chat.id, stored.id, "positive", 0.9)
    assert await repository.reset_history(user.id, chat.id) == 1
    assert await repository.history(user.id, chat.id, 10) == []
    assert len(await repository.moods(user.id)) == 1
    assert len(await repository.messages_for_user(user.id)) == 1


async def test_moods_window_and_aware_utc(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    base = datetime(2026, 3, 1, 12, tzinfo=UTC)
    for day in range(5):
        await repository.add_mood(
            user.id, chat.id, None, "neutral", 0.5, created_at=base + timedelta(days=day)
        )
    window = await repository.moods(user.id, since=base + timedelta(days=1), until=base + timedelta(days=3))
    assert [m.created_at for m in window] == [base + timedelta(days=1), base + timedelta(days=2)]
    assert all(m.created_at.tzinfo is not None for m in window)


async def test_forget_user_deletes_every_row_about_them_only(repository: Repository) -> None:
    ada, dm = await _user_and_chat(repository, "1", "1")
    bob, bob_dm = await _user_and_chat(repository, "2", "2")
    group = await repository.ensure_chat("telegram", "-5", False)
    for user, chat in ((ada, dm), (ada, group), (bob, bob_dm), (bob, group)):
        stored = await repository.add_message(user.id, chat.id, "user", "hi")
        await repository.add_mood(user.id, chat.id, stored.id, "positive", 0.8)
    deleted = await repository.forget_user(ada.id)
    assert deleted == {"mood_entries": 2, "messages": 2, "chats": 1, "users": 1}
    assert await count_rows(repository, ada.id) == {"users": 0, "chats": 0, "messages": 0, "mood_entries": 0}
    assert await count_rows(repository, bob.id) == {"users": 1, "chats": 1, "messages": 2, "mood_entries": 2}
    assert await repository.get_user("telegram", "1") is None


async def test_purge_blanks_old_texts_and_keeps_moods(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    old = datetime.now(UTC) - timedelta(days=40)
    stored = await repository.add_message(user.id, chat.id, "user", "old secret", created_at=old)
    await repository.add_message(user.id, chat.id, "user", "new")
    await repository.add_mood(user.id, chat.id, stored.id, "negative", 0.7, created_at=old)
    assert await repository.purge_message_texts(datetime.now(UTC) - timedelta(days=30)) == 1
    texts = [m.text for m in await repository.messages_for_user(user.id)]
    assert texts == [None, "new"]
    moods = await repository.moods(user.id)
    assert [(m.label, m.score) for m in moods] == [("negative", 0.7)]


async def test_settings_and_stats(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    await repository.set_timezone(user.id, "Asia/Shanghai")
    await repository.set_mood_logging(user.id, False)
    refreshed = await repository.get_user("telegram", "1")
    assert refreshed is not None and refreshed.timezone == "Asia/Shanghai" and not refreshed.mood_logging
    await repository.add_mood(
        user.id, chat.id, None, "positive", 0.9, created_at=datetime(2026, 1, 2, tzinfo=UTC)
    )
    stats = await repository.stats()
    assert (stats.users, stats.chats, stats.mood_entries) == (1, 1, 1)
    assert stats.moods_per_day == (("2026-01-02", "positive", 1),)


async def test_text_is_stored_verbatim_through_bound_parameters(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    nasty = "'); DROP TABLE messages; -- \u202e 😀 \u200b"
    await repository.add_message(user.id, chat.id, "user", nasty)
    assert [m.text for m in await repository.messages_for_user(user.id)] == [nasty]


async def test_schema_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'again.db'}"
    first = open_repository(url)
    await first.initialize()
    await first.ensure_user("console", "me", "me")
    await first.close()
    second = open_repository(url)
    await second.initialize()
    assert await second.get_user("console", "me") is not None
    await second.close()


async def test_concurrent_get_or_create_returns_one_row(repository: Repository) -> None:
    import asyncio

    users = await asyncio.gather(*(repository.ensure_user("discord", "7", "Eve") for _ in range(5)))
    assert len({u.id for u in users}) == 1
    chats = await asyncio.gather(*(repository.ensure_chat("discord", "9", False) for _ in range(5)))
    assert len({c.id for c in chats}) == 1


async def test_briefly_locked_database_is_waited_for(tmp_path: Path) -> None:
    import asyncio
    import sqlite3
    import threading

    path = tmp_path / "locked.db"
    repo = open_repository(f"sqlite+aiosqlite:///{path}")
    await repo.initialize()
    user, chat = await _user_and_chat(repo)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(5)
        connection.execute("COMMIT")
        connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(5)
    asyncio.get_running_loop().call_later(0.3, release.set)
    stored = await repo.add_message(user.id, chat.id, "user", "written once the lock is gone")
    holder.join()
    assert stored.id > 0
    await repo.close()


async def test_a_message_has_one_mood_entry_however_often_it_is_logged(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    stored = await repository.add_message(user.id, chat.id, "user", "hi")
    first = await repository.add_mood(user.id, chat.id, stored.id, "positive", 0.9)
    again = await repository.add_mood(user.id, chat.id, stored.id, "negative", 0.2)
    assert again == first
    assert [(m.label, m.message_id) for m in await repository.moods(user.id)] == [("positive", stored.id)]


async def test_claims_are_exclusive_until_their_lease_expires(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    now = datetime.now(UTC)
    stored = await repository.add_message(
        user.id, chat.id, "user", "hi", claimed_by="a", lease_until=now + timedelta(seconds=30)
    )
    assert await repository.pending_messages(claimable_at=now) == []
    assert not await repository.claim_message(stored.id, "b", now + timedelta(seconds=30), now)
    later = now + timedelta(seconds=31)
    [item] = await repository.pending_messages(claimable_at=later)
    assert item.message.claimed_by == "a"
    assert await repository.claim_message(stored.id, "b", later + timedelta(seconds=30), later)
    assert not await repository.claim_message(stored.id, "a", later + timedelta(seconds=30), later)
    assert await repository.renew_claims("a", [stored.id], later + timedelta(hours=1)) == 0
    assert await repository.renew_claims("b", [stored.id], later + timedelta(hours=1)) == 1
    # the first claimant lost it: its reply is refused and nothing is written
    assert (
        await repository.finish_reply(stored.id, "a", "late", user_id=user.id, chat_id=chat.id, mood=None)
        is None
    )
    assert [m.role for m in await repository.messages_for_user(user.id)] == ["user"]
    assert await repository.release_claims("b") == 1
    assert await repository.claim_message(stored.id, "c", now + timedelta(seconds=30), now)


async def test_finish_reply_stores_reply_mood_and_status_together(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    now = datetime.now(UTC)
    stored = await repository.add_message(
        user.id, chat.id, "user", "hi", claimed_by="a", lease_until=now + timedelta(seconds=30)
    )
    reply = await repository.finish_reply(
        stored.id, "a", "hello!", user_id=user.id, chat_id=chat.id, mood=("positive", 0.8)
    )
    assert reply is not None and reply.reply_to_id == stored.id
    [item] = await repository.pending_messages()
    assert item.message.status == MessageStatus.REPLIED
    assert item.reply is not None and item.reply.text == "hello!"
    assert item.mood is not None and (item.mood.label, item.mood.score) == ("positive", 0.8)
    # a second finish (e.g. a stale retry) changes nothing
    assert (
        await repository.finish_reply(stored.id, "a", "again", user_id=user.id, chat_id=chat.id, mood=None)
        is None
    )
    await repository.set_message_status(stored.id, MessageStatus.ANSWERED)
    assert await repository.pending_messages() == []
    [user_row, reply_row] = await repository.messages_for_user(user.id)
    assert user_row.claimed_by is None and reply_row.text == "hello!"
    assert [m.text for m in await repository.history(user.id, chat.id, 10)] == ["hi", "hello!"]


async def test_earlier_unfinished_messages_of_others_hold_up_a_user_turn(repository: Repository) -> None:
    user, chat = await _user_and_chat(repository)
    now = datetime.now(UTC)
    lease = now + timedelta(seconds=30)
    first = await repository.add_message(user.id, chat.id, "user", "one", claimed_by="a", lease_until=lease)
    second = await repository.add_message(user.id, chat.id, "user", "two", claimed_by="b", lease_until=lease)
    assert await repository.unfinished_before(second.id, "b", now)  # "a" answers "one" first
    assert not await repository.unfinished_before(second.id, "b", lease + timedelta(seconds=1))  # "a" died
    assert not await repository.unfinished_before(second.id, "a", now)  # its own: the worker keeps order
    assert not await repository.unfinished_before(first.id, "a", now)
    await repository.set_message_status(first.id, MessageStatus.ANSWERED)
    assert not await repository.unfinished_before(second.id, "b", now)


async def test_a_platform_message_is_stored_once_per_chat(repository: Repository) -> None:
    from bot.errors import DuplicateMessageError

    user, chat = await _user_and_chat(repository)
    other = await repository.ensure_chat("telegram", "11", True, user.id)
    await repository.add_message(user.id, chat.id, "user", "hi", platform_message_id="5")
    with pytest.raises(DuplicateMessageError):
        await repository.add_message(user.id, chat.id, "user", "hi", platform_message_id="5")
    await repository.add_message(user.id, other.id, "user", "hi", platform_message_id="5")  # another chat
    await repository.add_message(user.id, chat.id, "user", "no id")
    await repository.add_message(user.id, chat.id, "user", "no id")
    assert len(await repository.messages_for_user(user.id)) == 4


async def test_crisis_replies_are_counted_without_anyone_attached(repository: Repository) -> None:
    user, _chat = await _user_and_chat(repository)
    assert (await repository.stats()).crisis_replies == 0
    await repository.add_safety_event("telegram")
    await repository.add_safety_event("discord")
    assert (await repository.stats()).crisis_replies == 2
    await repository.forget_user(user.id)  # the count is no one's data
    assert (await repository.stats()).crisis_replies == 2


async def test_an_existing_database_gets_the_safety_events_table(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    repo = open_repository(f"sqlite+aiosqlite:///{path}")
    await repo.initialize()
    await repo.close()
    with sqlite3.connect(path) as connection:  # as a database at the revision before the table
        connection.execute("DROP TABLE safety_events")
        connection.execute("UPDATE alembic_version SET version_num = '0003'")
    repo = open_repository(f"sqlite+aiosqlite:///{path}")
    await repo.initialize()
    try:
        await repo.add_safety_event("console")
        assert (await repo.stats()).crisis_replies == 1
    finally:
        await repo.close()
