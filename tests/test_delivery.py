"""The core's reply lifecycle (bot.delivery) against a fake port, and the one retry helper."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from bot.commands import COMMAND_MENU, COMMANDS
from bot.delivery import (
    Delivery,
    Outgoing,
    Place,
    PortLimits,
    Posted,
    PrivateNotes,
    RefusedError,
    TransientError,
    queue_notice,
    with_backoff,
)
from bot.engine import ReplySink
from bot.errors import MoodmateError, PlatformError
from bot.types import Action, Attachment, IncomingMessage, Mood, MoodLabel, Platform, Reply, ReplyKind

HAPPY = Mood(MoodLabel.POSITIVE, 0.9)
NOTES = PrivateNotes("sent you that privately", "could not message you privately")
PART = 20  # the fake platform's message limit, in characters


@dataclass
class Request:
    kind: str  # post, edit, delete, typing
    where: str
    text: str | None = None
    quote: bool = False
    actions: tuple[Action, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    retry: bool = True
    at: float = field(default_factory=time.monotonic)


class FakePort:
    """A platform that records every request; ``fail[kind]`` is raised by the next such request."""

    def __init__(
        self,
        log: list[Request],
        *,
        where: str = "group",
        private: bool = False,
        stream_delay: float | None = 0.1,
        edit_interval: float = 0.1,
        typing_interval: float = 0.05,
    ) -> None:
        self.log = log
        self.where = where
        self.place = Place(where, private, PortLimits(typing_interval, edit_interval, stream_delay), NOTES)
        self.fail: dict[str, list[Exception]] = {}
        self.private_port: FakePort | None = None
        self._ids = 0

    def render(self, reply: Reply) -> list[str]:
        text = (f"{reply.mood.label}\n" if reply.mood else "") + reply.text
        return [text[i : i + PART] for i in range(0, len(text), PART)]

    def preview(self, mood: Mood, text: str) -> str | None:
        return f"{mood.label}\n{text.strip()}"[: PART - 2] + " …" if text.strip() else None

    def _request(self, kind: str, message: Outgoing | None = None, **details: object) -> None:
        failures = self.fail.get(kind)
        self.log.append(
            Request(
                kind,
                self.where,
                message.text if message else None,
                actions=message.actions if message else (),
                attachments=message.attachments if message else (),
                **details,  # type: ignore[arg-type]
            )
        )
        if failures:
            raise failures.pop(0)

    async def post(self, message: Outgoing, *, quote: bool, retry: bool = True) -> Posted:
        self._request("post", message, quote=quote, retry=retry)
        self._ids += 1
        return Posted(f"{self.where}-{self._ids}", message.text)

    async def edit(self, posted: Posted, message: Outgoing, *, retry: bool = True) -> Posted:
        self._request("edit", message, retry=retry)
        return Posted(posted.ref, message.text)

    async def delete(self, posted: Posted) -> None:
        self._request("delete", Outgoing(str(posted.ref)))

    async def typing(self) -> None:
        self._request("typing")

    async def open_private(self) -> FakePort:
        self._request("open-private")
        if self.private_port is None:
            raise RefusedError("no private chat")
        return self.private_port


Script = Callable[[ReplySink], Awaitable[list[Reply]]]


class FakeEngine:
    """Answers with ``script`` (which drives the sink as the engine would) and records confirmations."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.confirmed: list[Reply] = []
        self.failed: list[Reply] = []

    async def handle(self, message: IncomingMessage, sink: ReplySink | None = None) -> list[Reply]:
        assert sink is not None
        return await self.script(sink)

    async def delivered(self, reply: Reply) -> None:
        self.confirmed.append(reply)

    async def not_delivered(self, reply: Reply) -> None:
        self.failed.append(reply)


def incoming(*, private: bool = False) -> IncomingMessage:
    return IncomingMessage(Platform.CONSOLE, "c1", "u1", "Ada", "hi", chat_is_private=private)


def writes(
    text: str, *, every: float, words: int | None = None, replies: list[Reply] | None = None
) -> Script:
    """A reply written word by word: the mood first, then the text so far every ``every`` seconds."""

    async def script(sink: ReplySink) -> list[Reply]:
        await sink.mood(HAPPY)
        parts = text.split(" ")
        for count in range(1, len(parts) + 1):
            await asyncio.sleep(every)
            await sink.partial(" ".join(parts[:count]))
        return replies if replies is not None else [Reply(text, mood=HAPPY, answers_id=1)]

    return script


def kinds(log: list[Request], *, where: str | None = None) -> list[str]:
    return [r.kind for r in log if r.kind != "typing" and (where is None or r.where == where)]


async def test_a_quick_reply_is_one_message_and_is_confirmed():
    log: list[Request] = []
    reply = Reply("hello there", mood=HAPPY, answers_id=7)
    engine = FakeEngine(writes("hello there", every=0.01, replies=[reply]))
    await Delivery(engine).answer(incoming(), FakePort(log, stream_delay=0.3))
    assert kinds(log) == ["post"]
    assert log[-1].text == "positive\nhello there" and log[-1].quote and log[-1].retry
    assert engine.confirmed == [reply] and engine.failed == []


async def test_the_preview_waits_for_the_delay_then_is_edited_at_the_pace_never_to_the_same_text():
    log: list[Request] = []
    engine = FakeEngine(writes("a b c d e f", every=0.05))
    await Delivery(engine).answer(incoming(), FakePort(log, stream_delay=0.12, edit_interval=0.1))
    first = next(r for r in log if r.kind == "post")
    assert first.text is not None and first.text.endswith(" …") and first.retry is False
    shown = [r for r in log if r.kind in ("post", "edit") and (r.text or "").endswith(" …")]
    assert all(later.at - earlier.at >= 0.09 for earlier, later in itertools.pairwise(shown))
    texts = [r.text for r in shown]
    assert all(a != b for a, b in itertools.pairwise(texts))
    assert all(not r.retry for r in shown)  # previews are best effort


async def test_a_long_reply_finishes_its_preview_in_place_and_overflows_with_buttons_and_files_last():
    log: list[Request] = []
    text = "one two three four five six seven"
    button = (Action("Again", "/again"),)
    files = (Attachment("a.csv", b"x", "text/csv"),)
    reply = Reply(text, mood=HAPPY, actions=button, attachments=files, answers_id=3)
    engine = FakeEngine(writes(text, every=0.06, replies=[reply]))
    port = FakePort(log, stream_delay=0.05, edit_interval=5.0)
    await Delivery(engine).answer(incoming(), port)
    parts = port.render(reply)
    assert len(parts) == 3
    after_preview = [r for r in log if r.kind != "typing"][1:]
    assert [r.kind for r in after_preview] == ["edit", "post", "post"]
    assert [r.text for r in after_preview] == parts
    assert [r.quote for r in after_preview[1:]] == [False, False]  # only the first part answers
    assert [r.actions for r in after_preview] == [(), (), button]
    assert [r.attachments for r in after_preview] == [(), (), files]
    assert engine.confirmed == [reply]


async def test_when_the_final_edit_fails_the_preview_goes_and_the_reply_is_sent_anew():
    log: list[Request] = []
    port = FakePort(log, stream_delay=0.05, edit_interval=5.0)
    engine = FakeEngine(writes("abc def", every=0.1))
    port.fail["edit"] = [PlatformError("message to edit not found")]
    await Delivery(engine).answer(incoming(), port)
    assert kinds(log) == ["post", "edit", "delete", "post"]
    assert log[-1].text == "positive\nabc def" and log[-1].quote and log[-1].retry
    assert len(engine.confirmed) == 1


async def test_a_failed_preview_stops_the_previews_but_not_the_reply():
    log: list[Request] = []
    port = FakePort(log, stream_delay=0.05, edit_interval=0.05)
    port.fail["post"] = [PlatformError("slow down")]
    engine = FakeEngine(writes("a b c d e", every=0.05))
    await Delivery(engine).answer(incoming(), port)
    assert kinds(log) == ["post", "post"]  # the failed preview, then the reply
    assert log[-1].retry and len(engine.confirmed) == 1


async def test_a_waiting_message_gets_one_queue_notice_removed_once_the_reply_shows():
    log: list[Request] = []

    async def waits(sink: ReplySink) -> list[Reply]:
        await sink.queued(2)
        await sink.queued(1)  # told once
        return await writes("abc def ghi", every=0.1)(sink)

    await Delivery(FakeEngine(waits)).answer(incoming(), FakePort(log, stream_delay=0.05, edit_interval=5))
    assert kinds(log) == ["post", "post", "delete", "edit"]
    notice, preview, deleted, _ = (r for r in log if r.kind != "typing")
    assert notice.text == queue_notice(2) and deleted.text == "group-1"
    assert preview.text is not None and preview.text.endswith(" …")


async def test_without_a_preview_the_queue_notice_goes_after_the_reply():
    log: list[Request] = []

    async def waits(sink: ReplySink) -> list[Reply]:
        await sink.queued(1)
        return [Reply("fine", mood=HAPPY)]

    await Delivery(FakeEngine(waits)).answer(incoming(), FakePort(log, stream_delay=None))
    assert kinds(log) == ["post", "post", "delete"]
    assert log[-1].text == "group-1"


async def test_a_private_answer_asked_for_in_a_group_goes_to_the_private_chat_with_a_note():
    log: list[Request] = []
    group = FakePort(log)
    group.private_port = FakePort(log, where="private", private=True)
    files = (Attachment("export.csv", b"1", "text/csv"),)
    reply = Reply("your data", kind=ReplyKind.COMMAND, private=True, attachments=files)

    async def command(sink: ReplySink) -> list[Reply]:
        return [reply]

    engine = FakeEngine(command)
    await Delivery(engine).answer(incoming(), group)
    posts = [r for r in log if r.kind == "post"]
    assert [(r.where, r.text) for r in posts] == [
        ("private", "your data"),
        ("group", NOTES.sent),
    ]
    assert posts[0].attachments == files and posts[1].quote
    assert engine.confirmed == [reply]


async def test_a_private_answer_that_cannot_go_privately_leaves_the_refused_note_in_the_group():
    log: list[Request] = []
    group = FakePort(log)  # no private chat: open_private refuses

    async def command(sink: ReplySink) -> list[Reply]:
        return [Reply("your data", kind=ReplyKind.COMMAND, private=True)]

    await Delivery(FakeEngine(command)).answer(incoming(), group)
    assert [(r.kind, r.text) for r in log if r.kind != "typing"] == [
        ("open-private", None),
        ("post", NOTES.refused),
    ]


async def test_in_a_private_place_a_private_answer_is_posted_right_there():
    log: list[Request] = []

    async def command(sink: ReplySink) -> list[Reply]:
        return [Reply("your data", kind=ReplyKind.COMMAND, private=True)]

    await Delivery(FakeEngine(command)).answer(incoming(private=True), FakePort(log, private=True))
    assert [(r.kind, r.text) for r in log if r.kind != "typing"] == [("post", "your data")]


async def test_a_refusal_gets_no_apology_into_that_chat_but_other_failures_do():
    log: list[Request] = []
    refused = FakePort(log, stream_delay=None)
    refused.fail["post"] = [RefusedError("blocked")]
    first, second = Reply("one", answers_id=1), Reply("two", answers_id=2)

    async def two(sink: ReplySink) -> list[Reply]:
        return [first, second]

    engine = FakeEngine(two)
    await Delivery(engine).answer(incoming(), refused)
    assert kinds(log) == ["post"] and engine.failed == [first, second]

    log.clear()
    failing = FakePort(log, stream_delay=None)
    failing.fail["post"] = [PlatformError("bad request")]
    engine = FakeEngine(two)
    await Delivery(engine).answer(incoming(), failing)
    assert [r.text for r in log if r.kind == "post"] == ["one", MoodmateError.user_message]
    assert engine.failed == [first, second] and engine.confirmed == []


async def test_an_engine_failure_is_answered_with_an_apology():
    log: list[Request] = []

    async def breaks(sink: ReplySink) -> list[Reply]:
        raise RuntimeError("boom")

    await Delivery(FakeEngine(breaks)).answer(incoming(), FakePort(log))
    assert "".join(r.text or "" for r in log if r.kind == "post") == MoodmateError.user_message


async def test_a_reply_cut_off_by_a_stop_deletes_its_preview_and_is_not_confirmed():
    log: list[Request] = []
    engine = FakeEngine(writes("a b c d e f g h i j k l m n", every=0.05))
    task = asyncio.create_task(Delivery(engine).answer(incoming(), FakePort(log, stream_delay=0.05)))
    while "post" not in kinds(log):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kinds(log)[0] == "post" and kinds(log)[-1] == "delete"
    assert engine.confirmed == engine.failed == []


async def test_typing_shows_until_the_reply_is_out_and_again_right_after_the_preview():
    log: list[Request] = []
    engine = FakeEngine(writes("a b c d", every=0.1))
    await Delivery(engine).answer(incoming(), FakePort(log, stream_delay=0.15, typing_interval=10.0))
    order = [r.kind for r in log]
    assert order[0] == "typing"
    assert order[order.index("post") + 1] == "typing"  # posting hides it on the platforms
    count = len(log)
    await asyncio.sleep(0.1)
    assert len(log) == count  # the loop ended with the reply


async def test_replies_being_written_for_one_place_share_one_typing_loop():
    log: list[Request] = []
    delivery = Delivery(FakeEngine(writes("a b", every=0.2)))
    port = FakePort(log, stream_delay=None, typing_interval=10.0)
    await asyncio.gather(delivery.answer(incoming(), port), delivery.answer(incoming(), port))
    assert [r.kind for r in log].count("typing") == 1
    assert delivery.typing.tasks == {}


async def test_deliver_can_replace_a_message_in_place():
    log: list[Request] = []
    port = FakePort(log)
    original = Posted("pressed", "Delete everything?")
    await Delivery(FakeEngine(writes("", every=0))).deliver(port, Reply("Deleted."), replacing=original)
    assert [(r.kind, r.text) for r in log] == [("edit", "Deleted.")]


# ---------------------------------------------------------------------- the retry helper


async def test_with_backoff_retries_transient_failures_doubling_the_wait(caplog: pytest.LogCaptureFixture):
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientError("connection reset")
        return "sent"

    assert await with_backoff(flaky, attempts=4, first_delay=0.05) == "sent"
    waits = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert len(calls) == 3 and waits[0] >= 0.045 and waits[1] >= 0.095

    calls.clear()

    async def down() -> str:
        calls.append(time.monotonic())
        raise TransientError("unreachable")

    with caplog.at_level(logging.WARNING), pytest.raises(TransientError):
        await with_backoff(down, attempts=3, first_delay=0.01)
    assert len(calls) == 3
    assert any("gave up after 3 tries" in record.getMessage() for record in caplog.records)


async def test_with_backoff_waits_what_the_platform_asked_and_leaves_other_errors_alone():
    calls: list[float] = []

    async def limited() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TransientError("429", retry_after=0.15)

    await with_backoff(limited, first_delay=0.01)
    assert calls[1] - calls[0] >= 0.14

    for error in (PlatformError("bad request"), RefusedError("blocked")):
        tries = 0

        async def final(error: PlatformError = error) -> None:
            nonlocal tries
            tries += 1
            raise error

        with pytest.raises(type(error)):
            await with_backoff(final, first_delay=0.01)
        assert tries == 1

    tries = 0

    async def once() -> None:
        nonlocal tries
        tries += 1
        raise TransientError("lost")

    with pytest.raises(TransientError):
        await with_backoff(once, attempts=1)
    assert tries == 1  # best effort: one try


# ---------------------------------------------------------------------- the command table


def test_one_command_table_feeds_the_menu_and_the_slash_commands():
    from adapters.discord.commands import slash_command

    async def run(interaction: object, text: str) -> None: ...

    assert [name for name, _ in COMMAND_MENU] == [spec.name for spec in COMMANDS]
    for spec in COMMANDS:
        command = slash_command(spec, run)  # type: ignore[arg-type]
        assert command.name == spec.name and command.description == spec.description
        options = [(p.display_name, [c.value for c in p.choices]) for p in command.parameters]
        if spec.argument is None:
            assert options == []
        else:
            assert options == [(spec.argument.name, [value for _, value in spec.argument.choices])]
