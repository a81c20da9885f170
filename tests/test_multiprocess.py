"""Two ``moodmate run`` processes in Telegram webhook mode on one PostgreSQL, behind a round-robin
balancer, fed by the fake Bot API: every message answered exactly once, in order per user; a process
killed mid-run leaves its claimed messages to the other, which answers each once after the lease.

Needs PostgreSQL (skipped with one line without it). The processes run the real command line with
the fake model (tests/fakes/fake_model_run.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from tests.databases import fresh_postgres
from tests.fakes.round_robin import RoundRobin
from tests.fakes.telegram_server import FakeTelegramServer

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_URL = "https://moodmate.example.com/telegram"
SECRET = "multi_process_secret"
LEASE_SECONDS = 3
USERS = 20
MESSAGES = 10
BURST = 6
KEY = re.compile(r"m(\d+) from u(\d+)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start_bot(  # type: ignore[no-untyped-def]
    name: str, port: int, server: FakeTelegramServer, database: str, workdir: Path, reply_seconds: float
):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_TOKEN": server.token,
        "TELEGRAM_API_BASE_URL": server.root_url,
        "TELEGRAM_WEBHOOK_URL": PUBLIC_URL,
        "TELEGRAM_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": database,
        "MOODMATE_INSTANCE_ID": name,
        "MOODMATE_CLAIM_LEASE_SECONDS": str(LEASE_SECONDS),
        "MOODMATE_MAX_PENDING_PER_USER": "50",
        "MOODMATE_STREAM_REPLIES": "false",
        "FAKE_MODEL_MOOD_SECONDS": "0.005",
        "FAKE_MODEL_REPLY_SECONDS": str(reply_seconds),
        "LOG_LEVEL": "INFO",
    }
    log = (workdir / f"{name}.log").open("wb")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.fake_model_run",
        "run",
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=log,
    )


def _answers(server: FakeTelegramServer) -> dict[int, list[int]]:
    """Per user (chat), the message numbers of the replies sent, in the order Telegram got them."""
    per_user: dict[int, list[int]] = defaultdict(list)
    for call in server.calls_to("sendMessage", ok_only=True):
        match = KEY.search(str(call.params.get("text", "")))
        if match is not None:
            per_user[int(match.group(2))].append(int(match.group(1)))
    return per_user


async def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _db(url: str, query: str):  # type: ignore[no-untyped-def]
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def test_two_webhook_processes_on_one_postgres_answer_each_message_once(tmp_path: Path) -> None:
    async with fresh_postgres() as database, FakeTelegramServer() as server:
        ports = [_free_port(), _free_port()]
        async with RoundRobin([f"http://127.0.0.1:{port}" for port in ports]) as balancer:
            server.route_webhook(PUBLIC_URL, balancer.url + "/telegram")
            # bot-a is the slower one, so that it has a backlog to leave behind when it is killed.
            bots = [
                await _start_bot(name, port, server, database, tmp_path, reply_seconds)
                for name, port, reply_seconds in zip(("bot-a", "bot-b"), ports, (0.15, 0.05), strict=True)
            ]
            try:
                await server.wait_for("setWebhook", count=2, timeout=90)
                await asyncio.sleep(1.0)  # both webhook servers listen

                # 1. 200 messages from 20 users, each user writing faster than they are answered.
                # Every other round in reverse, so that each user's messages alternate between processes.
                people = [server.user(1000 + u, f"User{u}") for u in range(USERS)]
                senders: list[int] = []
                for index in range(MESSAGES):
                    order = range(USERS) if index % 2 == 0 else range(USERS - 1, -1, -1)
                    for number in order:
                        person = people[number]
                        server.send_text(server.private_chat(person), person, f"m{index} from u{number}")
                        senders.append(number)
                    await asyncio.sleep(0.15)

                async def all_answered() -> bool:
                    return sum(len(v) for v in _answers(server).values()) >= USERS * MESSAGES

                await _until(all_answered, 120, "200 replies")
                await asyncio.sleep(1.0)  # nothing more arrives
                answers = _answers(server)
                assert sum(len(v) for v in answers.values()) == USERS * MESSAGES  # none twice
                for user in range(USERS):
                    assert answers[user] == list(range(MESSAGES)), (user, answers[user])
                # Updates are posted one by one, in order: the n-th accepted one is the n-th sent.
                backends = [index for index, status in balancer.attempts if status == 200]
                per_user: dict[int, set[int]] = defaultdict(set)
                for number, backend in zip(senders, backends, strict=False):
                    per_user[number].add(backend)
                assert all(per_user[user] == {0, 1} for user in range(USERS))  # each user on both

                # 2. A burst, then one process is killed while it holds claimed, unanswered messages.
                for index in range(MESSAGES, MESSAGES + BURST):
                    for number, person in enumerate(people):
                        server.send_text(server.private_chat(person), person, f"m{index} from u{number}")

                claimed: list[int] = []

                async def bot_a_is_busy() -> bool:
                    rows = await _db(
                        database,
                        "SELECT id, status FROM messages WHERE role = 'user' AND claimed_by = 'bot-a' "
                        "AND status IN ('pending', 'replied')",
                    )
                    claimed[:] = [row["id"] for row in rows]
                    return sum(1 for row in rows if row["status"] == "pending") >= 3

                try:
                    await _until(bot_a_is_busy, 60, "bot-a to hold unanswered messages")
                except AssertionError:
                    summary = await _db(
                        database,
                        "SELECT claimed_by, status, count(*) FROM messages WHERE role = 'user' "
                        "GROUP BY claimed_by, status",
                    )
                    posts = Counter(status for _, status, _ in server.webhook_posts)
                    raise AssertionError(f"{[tuple(r) for r in summary]} posts={posts}") from None
                bots[0].send_signal(signal.SIGKILL)
                await bots[0].wait()
                killed_at = time.monotonic()
                killed_wall = datetime.now(UTC).replace(tzinfo=None)
                unanswered = [
                    row["id"]
                    for row in await _db(
                        database,
                        "SELECT id FROM messages WHERE status = 'pending' AND id = ANY(ARRAY["
                        + ",".join(map(str, claimed))
                        + "])",
                    )
                ]

                async def all_finished() -> bool:
                    rows = await _db(
                        database,
                        "SELECT count(*) AS n, "
                        "count(*) FILTER (WHERE status IN ('pending', 'replied')) AS open "
                        "FROM messages WHERE role = 'user'",
                    )
                    return rows[0]["n"] == USERS * (MESSAGES + BURST) and rows[0]["open"] == 0

                await _until(all_finished, 90, "every message finished")
                taken_over_after = time.monotonic() - killed_at
                await asyncio.sleep(1.0)
            finally:
                for bot in bots:
                    if bot.returncode is None:
                        bot.send_signal(signal.SIGTERM)
                for bot in bots:
                    try:
                        await asyncio.wait_for(bot.wait(), 30)
                    except TimeoutError:
                        bot.kill()
                        await bot.wait()

        answers = _answers(server)
        total = USERS * (MESSAGES + BURST)
        delivered = Counter((user, index) for user, indexes in answers.items() for index in indexes)
        assert len(delivered) == total  # 0 lost
        assert [key for key, count in delivered.items() if count > 1] == []  # none twice
        rows = await _db(
            database,
            "SELECT m.id, m.status, m.claimed_by, "
            "(SELECT count(*) FROM messages r WHERE r.reply_to_id = m.id) AS replies, "
            "(SELECT count(*) FROM mood_entries e WHERE e.message_id = m.id) AS moods "
            "FROM messages m WHERE m.role = 'user'",
        )
        assert len(rows) == total
        assert {row["status"] for row in rows} == {"answered"}
        assert all(row["replies"] == 1 and row["moods"] == 1 for row in rows)
        # The killed process's messages were answered by the other one only once their leases expired.
        replied_at = await _db(
            database,
            "SELECT created_at FROM messages WHERE reply_to_id = ANY(ARRAY["
            + ",".join(map(str, unanswered or [0]))
            + "])",
        )
        assert len(replied_at) == len(unanswered)
        assert all((row["created_at"] - killed_wall).total_seconds() > 1.5 for row in replied_at)
        print(  # the figures for the record (pytest -s shows them)
            f"\nmulti-process: {total} messages, {len(delivered)} answered once, 0 twice, "
            f"{len(claimed)} claimed by the killed process ({len(unanswered)} still pending), "
            f"all finished {taken_over_after:.1f} s after the kill"
        )
