"""Load and fault test: drive the real engine with many simulated users and count what happens.

    python bench/loadtest.py                       # 50 users x 5 messages, fake model with realistic timing
    python bench/loadtest.py --real --users 6 --messages 2   # the real bundled model (slow)
    python bench/loadtest.py --fault               # kill a loaded process mid-run, restart, count recovery

Prints messages in / answered / refused / failed / lost (lost must be 0), p50/p95 wait and total
latency, throughput, peak RSS, and the fairness figure: the most reply calls any one other user
started between a user's first message entering the inference queue and the start of its own reply
(fair queueing promises at most 1; the call already running then is not counted).

``--fault`` also counts, over the killed run and the restart together, messages with more than one
mood entry, messages with more than one stored reply, and replies delivered twice (all must be 0).
The loaded process records every reply it delivered (and confirms it to the engine); the restart
waits for the killed process's claims to expire (``--lease`` seconds) before it recovers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.bootstrap import bootstrap  # noqa: E402
from bot.model.fake import FakeModel  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.types import IncomingMessage, Platform, ReplyKind  # noqa: E402

SHORT = ["hi", "I'm tired", "that was great!", "ugh, monday", "what should I cook tonight?"]
LONG = "Today was a long day at work and I kept thinking about what my manager said in the meeting. " * 6


@dataclass
class CallLog:
    """Which message's reply ran when (filled by the timing wrapper around the model)."""

    starts: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TimedModel:
    """Wraps any LanguageModel and records when each reply call starts (and for which message)."""

    def __init__(self, inner, log: CallLog) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.log, self.name = inner, log, getattr(inner, "name", "model")

    def classify(self, texts):  # type: ignore[no-untyped-def]
        return self.inner.classify(texts)

    def generate(self, system, history, **kwargs):  # type: ignore[no-untyped-def]
        with self.log.lock:
            self.log.starts.append((time.perf_counter(), history[-1].content))
        return self.inner.generate(system, history, **kwargs)

    def count_tokens(self, text):  # type: ignore[no-untyped-def]
        return self.inner.count_tokens(text)


def _text(user: int, index: int, rng: random.Random) -> str:
    body = LONG if rng.random() < 0.15 else rng.choice(SHORT)
    return f"{body} #u{user}m{index}"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_load(args: argparse.Namespace, database: Path) -> dict[str, object]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{database}",
        max_pending_per_user=args.max_pending,
        queue_size=max(200, args.users * args.messages),
        max_reply_tokens=args.reply_tokens,
        claim_lease_seconds=getattr(args, "lease", 60.0),
    )
    log = CallLog()
    inner = None
    if not args.real:
        inner = FakeModel(mood_delay=args.mood_seconds, reply_delay=args.reply_seconds)
    started = time.perf_counter()
    app = await bootstrap(settings, model=None if inner is None else TimedModel(inner, log))
    if inner is None:
        app.worker.model = app.engine.worker.model = TimedModel(app.model, log)  # type: ignore[misc]
    queued: dict[str, float] = {}
    read_mood = app.worker.read_mood

    async def timed_read_mood(text: str):  # type: ignore[no-untyped-def]
        queued.setdefault(text, time.perf_counter())
        return await read_mood(text)

    app.worker.read_mood = timed_read_mood  # type: ignore[method-assign]
    cold_start = time.perf_counter() - started
    rng = random.Random(args.seed)
    flooders = set(range(max(1, args.users // 10)))  # 10% of users send everything at once
    sent: dict[str, float] = {}
    finished: dict[str, float] = {}
    outcome: dict[str, str] = {}
    deliveries = getattr(args, "deliveries", None)
    delivery_log = deliveries.open("a", encoding="utf-8") if deliveries is not None else None
    confirm = getattr(app.engine, "delivered", None)  # engines before the message lifecycle had none

    async def send(user: int, index: int) -> None:
        text = _text(user, index, rng)
        incoming = IncomingMessage(
            platform=Platform.CONSOLE,
            chat_id=f"chat{user}",
            user_id=f"user{user}",
            display_name=f"user{user}",
            text=text,
        )
        sent[text] = time.perf_counter()
        replies = await app.engine.handle(incoming)
        finished[text] = time.perf_counter()
        if replies and replies[0].kind is ReplyKind.CHAT:
            if delivery_log is not None:  # "sent to the platform": the fault run counts these
                delivery_log.write(text + "\n")
                delivery_log.flush()
            if confirm is not None:
                await confirm(replies[0])
        if not replies:
            outcome[text] = "refused"
        elif replies[0].kind is ReplyKind.CHAT:
            outcome[text] = "answered"
        elif replies[0].kind is ReplyKind.NOTICE:
            outcome[text] = "refused"
        else:
            outcome[text] = "failed"

    async def user_session(user: int) -> None:
        if user in flooders:
            await asyncio.gather(*(send(user, i) for i in range(args.messages)))
            return
        await asyncio.sleep(rng.uniform(0, args.spread))
        for index in range(args.messages):
            await send(user, index)
            await asyncio.sleep(rng.uniform(0, args.think))

    async with app:
        load_started = time.perf_counter()
        await asyncio.gather(*(user_session(u) for u in range(args.users)))
        wall = time.perf_counter() - load_started
        rows = await app.repository.stats()
    if delivery_log is not None:
        delivery_log.close()

    reply_start = {text: at for at, text in log.starts}
    waits = [reply_start[t] - sent[t] for t in sent if t in reply_start]
    totals = [finished[t] - sent[t] for t, o in outcome.items() if o == "answered"]

    # Fairness: for each user, the most reply calls any ONE other user started between the user's
    # first message entering the inference queue and the start of the user's first reply (fair
    # queueing promises <= 1; the call already running then is not counted).
    def owner_of(text: str) -> str:
        return text.rsplit("#u", 1)[1].split("m")[0]

    fairness = 0
    for user in map(str, range(args.users)):
        entered = min((at for text, at in queued.items() if owner_of(text) == user), default=None)
        served = min((at for at, text in log.starts if owner_of(text) == user), default=None)
        if entered is None or served is None:
            continue
        per_owner: dict[str, int] = {}
        for at, text in log.starts:
            if entered < at < served and owner_of(text) != user:
                per_owner[owner_of(text)] = per_owner.get(owner_of(text), 0) + 1
        fairness = max(fairness, max(per_owner.values(), default=0))
    counts = {
        kind: sum(1 for o in outcome.values() if o == kind) for kind in ("answered", "refused", "failed")
    }
    messages_in = len(sent)
    return {
        "model": "real" if args.real else f"fake ({args.mood_seconds}s mood, {args.reply_seconds}s reply)",
        "users": args.users,
        "messages_in": messages_in,
        **counts,
        "lost": messages_in - sum(counts.values()),
        "stored_messages_incl_replies": rows.messages,
        "wait_p50_s": _percentile(waits, 0.5),
        "wait_p95_s": _percentile(waits, 0.95),
        "total_p50_s": _percentile(totals, 0.5),
        "total_p95_s": _percentile(totals, 0.95),
        "throughput_msg_per_s": counts["answered"] / wall if wall else 0.0,
        "wall_s": wall,
        "cold_start_s": cold_start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fairness_max_calls_by_one_other_user_before_first_reply": fairness,
    }


def _print(result: dict[str, object]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def _duplicate_counts(database: Path) -> dict[str, int]:
    """Messages with more than one mood entry, and with more than one stored reply."""
    with sqlite3.connect(database) as connection:
        moods = connection.execute(
            "SELECT COUNT(*) FROM (SELECT message_id FROM mood_entries WHERE message_id IS NOT NULL "
            "GROUP BY message_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        replies = connection.execute(
            "SELECT COUNT(*) FROM (SELECT reply_to_id FROM messages WHERE role = 'assistant' "
            "AND reply_to_id IS NOT NULL GROUP BY reply_to_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        texts = [row[0] for row in connection.execute("SELECT text FROM messages WHERE role = 'user'")]
    return {"moods": moods, "replies": replies, "stored": len(texts)}


def _user_messages(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT text, status FROM messages WHERE role = 'user'").fetchall()


def _status_counts(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT status, COUNT(*) FROM messages WHERE role = 'user' GROUP BY status"
        ).fetchall()
    return {status: count for status, count in rows}


async def _recover(database: Path, args: argparse.Namespace) -> tuple[dict[str, int], list[str]]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{database}",
        pending_max_age_minutes=args.max_age_minutes,
        claim_lease_seconds=args.lease,
    )
    model = FakeModel(mood_delay=args.mood_seconds, reply_delay=args.reply_seconds)
    app = await bootstrap(settings, model=model)
    delivered: list[str] = []
    chat_replies: list[str] = []

    async def deliver(message: IncomingMessage, reply) -> None:  # type: ignore[no-untyped-def]
        delivered.append(message.chat_id)
        if reply.kind is ReplyKind.CHAT:
            chat_replies.append(message.text)

    async with app:
        report = await app.engine.recover_pending(deliver)
    counts = {
        "answered": report.answered,
        "resent": getattr(report, "resent", 0),
        "apologised": report.apologised,
        "failed": report.failed,
        "delivered": len(delivered),
    }
    return counts, chat_replies


def run_fault(args: argparse.Namespace) -> dict[str, object]:
    """Start a loaded child process, SIGKILL it mid-run, restart, and count every stored message."""
    workdir = Path(tempfile.mkdtemp(prefix="moodmate-fault-"))
    database = workdir / "fault.db"
    deliveries = workdir / "delivered.txt"
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--database",
            str(database),
            "--deliveries",
            str(deliveries),
            "--users",
            str(args.users),
            "--messages",
            str(args.messages),
            "--mood-seconds",
            str(args.mood_seconds),
            "--reply-seconds",
            str(args.reply_seconds),
            "--max-pending",
            str(args.max_pending),
            "--lease",
            str(args.lease),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(args.kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = _status_counts(database)
    time.sleep(args.lease + 0.5)  # the killed process's claims expire; only then may others take them
    recovery, recovered_texts = asyncio.run(_recover(database, args))
    after = _status_counts(database)
    duplicates = _duplicate_counts(database)
    sent_live = deliveries.read_text(encoding="utf-8").splitlines() if deliveries.exists() else []
    times_delivered = Counter(sent_live) + Counter(recovered_texts)
    unfinished = after.get("pending", 0) + after.get("replied", 0)
    never_delivered = sum(
        1 for text, status in _user_messages(database) if status == "answered" and times_delivered[text] == 0
    )
    stored = sum(before.values())
    return {
        "stored_before_kill": stored,
        "pending_at_kill": before.get("pending", 0),
        "replied_not_delivered_at_kill": before.get("replied", 0),
        "answered_before_kill": before.get("answered", 0),
        "recovered_answered": recovery["answered"],
        "recovered_resent_from_stored_reply": recovery["resent"],
        "recovered_apologised": recovery["apologised"],
        "recovered_failed": recovery["failed"],
        "replies_delivered_after_restart": recovery["delivered"],
        "still_unfinished_after_restart": unfinished,
        "messages_with_more_than_one_mood_entry": duplicates["moods"],
        "messages_with_more_than_one_stored_reply": duplicates["replies"],
        "replies_delivered_twice": sum(1 for count in times_delivered.values() if count > 1),
        "lost": unfinished + never_delivered,
    }


def _fault_ok(result: dict[str, object]) -> bool:
    keys = (
        "lost",
        "messages_with_more_than_one_mood_entry",
        "messages_with_more_than_one_stored_reply",
        "replies_delivered_twice",
    )
    return all(result.get(key, 0) == 0 for key in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="use the real model from MOODMATE_MODEL")
    parser.add_argument("--mood-seconds", type=float, default=0.08, help="fake model: seconds per mood batch")
    parser.add_argument("--reply-seconds", type=float, default=0.25, help="fake model: seconds per reply")
    parser.add_argument("--reply-tokens", type=int, default=64)
    parser.add_argument("--max-pending", type=int, default=3)
    parser.add_argument("--spread", type=float, default=2.0, help="seconds over which calm users arrive")
    parser.add_argument("--think", type=float, default=0.5, help="max seconds between a calm user's messages")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault", action="store_true", help="kill a loaded process, restart, count")
    parser.add_argument("--kill-after", type=float, default=3.0)
    parser.add_argument("--max-age-minutes", type=float, default=60.0)
    parser.add_argument(
        "--lease", type=float, default=2.0, help="fault run: seconds a message claim holds unless renewed"
    )
    parser.add_argument("--database", type=Path)
    parser.add_argument("--deliveries", type=Path, help="append each delivered message's text here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.fault:
        result = run_fault(args)
    else:
        database = args.database or Path(tempfile.mkdtemp(prefix="moodmate-load-")) / "load.db"
        result = asyncio.run(run_load(args, database))
    if not args.quiet:
        _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if _fault_ok(result) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
