"""The inference worker: one thread, FIFO per user, fair across users, survives failures."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.errors import ModelError, ModelTimeoutError, QueueFullError
from bot.inference import InferenceWorker, WorkerStoppedError
from bot.model.base import ChatTurn
from bot.model.fake import FakeModel
from bot.types import MoodLabel


class RecordingModel(FakeModel):
    """Records the order replies are generated in, and that the loop thread is never used."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.order: list[str] = []
        self.loop_thread = threading.get_ident()

    def generate(self, system, history, **kwargs):  # type: ignore[no-untyped-def]
        assert threading.get_ident() != self.loop_thread, "model ran on the event loop"
        self.order.append(history[-1].content)
        return super().generate(system, history, **kwargs)


def _turns(text: str) -> list[ChatTurn]:
    return [ChatTurn("user", text)]


async def _started(model: FakeModel, **kwargs: object) -> InferenceWorker:
    worker = InferenceWorker(model, **kwargs)  # type: ignore[arg-type]
    await worker.start()
    return worker


async def test_model_calls_run_off_the_event_loop_on_one_thread() -> None:
    model = RecordingModel()
    worker = await _started(model)
    try:
        moods = await asyncio.gather(*(worker.read_mood(t) for t in ("I love it", "meh", "so sad")))
        await asyncio.gather(*(worker.submit_reply("a", "sys", _turns(t), max_new_tokens=8) for t in "xyz"))
    finally:
        await worker.stop()
    assert [m.label for m in moods] == [MoodLabel.POSITIVE, MoodLabel.NEUTRAL, MoodLabel.NEGATIVE]
    assert len(model.call_threads) == 1
    assert threading.get_ident() not in model.call_threads


async def test_waiting_mood_reads_run_as_one_batch() -> None:
    model = FakeModel(mood_delay=0.05)
    worker = await _started(model, mood_batch_size=8)
    try:
        first = asyncio.create_task(worker.read_mood("first"))
        await asyncio.sleep(0.01)  # the first read is now running alone
        rest = [asyncio.create_task(worker.read_mood(f"m{i}")) for i in range(5)]
        await asyncio.gather(first, *rest)
    finally:
        await worker.stop()
    assert model.classify_batches == [["first"], ["m0", "m1", "m2", "m3", "m4"]]


async def test_replies_are_fifo_per_user_and_round_robin_across_users() -> None:
    model = RecordingModel(reply_delay=0.02)
    worker = await _started(model)
    try:
        tasks = [worker.submit_reply("flood", "s", _turns(f"f{i}"), max_new_tokens=8) for i in range(5)]
        await asyncio.sleep(0.005)
        tasks.append(worker.submit_reply("calm", "s", _turns("c0"), max_new_tokens=8))
        await asyncio.gather(*tasks)
    finally:
        await worker.stop()
    # f0 was already running; the calm user's first message goes next, ahead of f1..f4.
    assert model.order == ["f0", "c0", "f1", "f2", "f3", "f4"]


async def test_calls_ahead_counts_the_running_call_and_fair_queue_order() -> None:
    model = FakeModel(reply_delay=0.1)
    worker = await _started(model)
    try:
        assert worker.calls_ahead("c") == 0
        running = worker.submit_reply("a", "s", _turns("1"), max_new_tokens=8)
        await asyncio.sleep(0.02)
        assert worker.calls_ahead("c") == 1  # a's reply is running
        waiting = [worker.submit_reply("a", "s", _turns(str(i)), max_new_tokens=8) for i in (2, 3)]
        waiting.append(worker.submit_reply("b", "s", _turns("4"), max_new_tokens=8))
        await asyncio.sleep(0)
        # A newcomer shares the current round with b; a's next replies belong to later rounds.
        assert worker.calls_ahead("c") == 2
        assert worker.calls_ahead("a") == 4
        await asyncio.gather(running, *waiting)
    finally:
        await worker.stop()


async def test_worker_survives_a_failing_call() -> None:
    model = FakeModel(fail_on="boom")
    worker = await _started(model)
    try:
        with pytest.raises(ModelError):
            await worker.read_mood("boom")
        with pytest.raises(ModelError):
            await worker.submit_reply("a", "s", _turns("boom"), max_new_tokens=8)
        assert (await worker.read_mood("happy")).label is MoodLabel.POSITIVE
        assert await worker.submit_reply("a", "s", _turns("hello"), max_new_tokens=8)
        assert worker.stats().failures == 2
    finally:
        await worker.stop()


async def test_unexpected_exceptions_and_memory_errors_become_model_errors() -> None:
    class Exploding(FakeModel):
        def classify(self, texts):  # type: ignore[no-untyped-def]
            raise MemoryError

        def generate(self, system, history, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("index out of range in self")

    worker = await _started(Exploding())
    try:
        with pytest.raises(ModelError, match="out of memory"):
            await worker.read_mood("x")
        with pytest.raises(ModelError):
            await worker.submit_reply("a", "s", _turns("x"), max_new_tokens=8)
    finally:
        await worker.stop()


async def test_timeout_stops_generation_and_the_worker_goes_on() -> None:
    model = FakeModel(token_delay=0.05, reply_fn=lambda s, h: " ".join(["word"] * 200))
    worker = await _started(model, timeout=0.2)
    try:
        with pytest.raises(ModelTimeoutError):
            await worker.submit_reply("a", "s", _turns("long"), max_new_tokens=8)
        model.reply_fn = None
        model.token_delay = 0
        assert await worker.submit_reply("a", "s", _turns("again"), max_new_tokens=8)
    finally:
        await worker.stop()


async def test_bounded_queue_refuses_beyond_capacity() -> None:
    model = FakeModel(reply_delay=0.1)
    worker = await _started(model, queue_size=2)
    try:
        running = worker.submit_reply("a", "s", _turns("1"), max_new_tokens=8)
        await asyncio.sleep(0.01)
        waiting = [worker.submit_reply("a", "s", _turns(str(i)), max_new_tokens=8) for i in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await worker.submit_reply("b", "s", _turns("4"), max_new_tokens=8)
        await asyncio.gather(running, *waiting)
    finally:
        await worker.stop()


async def test_stop_fails_queued_jobs_as_stopped_not_as_errors() -> None:
    model = FakeModel(reply_delay=0.1)
    worker = await _started(model)
    running = worker.submit_reply("a", "s", _turns("1"), max_new_tokens=8)
    await asyncio.sleep(0.01)
    queued = worker.submit_reply("b", "s", _turns("2"), max_new_tokens=8)
    await asyncio.sleep(0)
    await worker.stop()
    assert await running  # the call in flight finished
    with pytest.raises(WorkerStoppedError):
        await queued
