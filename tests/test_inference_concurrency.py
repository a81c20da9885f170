"""The inference worker with several calls in flight (an inference server): per-user order, fairness,
the bounded queue, and mood results handed out in arrival order."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from bot.bootstrap import bootstrap
from bot.errors import QueueFullError
from bot.inference import InferenceWorker
from bot.model.base import ChatTurn
from bot.model.fake import FakeModel
from bot.types import Mood
from tests.conftest import make_settings


class TracingModel(FakeModel):
    """Records when each reply starts and ends, and the most calls running at once."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.spans: list[tuple[str, float, float]] = []
        self.starts: list[str] = []
        self.running = 0
        self.most_running = 0
        self._trace = threading.Lock()

    def generate(self, system, history, **kwargs):  # type: ignore[no-untyped-def]
        text = history[-1].content
        with self._trace:
            self.starts.append(text)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        started = time.monotonic()
        try:
            return super().generate(system, history, **kwargs)
        finally:
            with self._trace:
                self.running -= 1
                self.spans.append((text, started, time.monotonic()))

    def classify(self, texts):  # type: ignore[no-untyped-def]
        if any(text.startswith("slow") for text in texts):
            time.sleep(0.15)
        return super().classify(texts)


def _turns(text: str) -> list[ChatTurn]:
    return [ChatTurn("user", text)]


async def _started(model: FakeModel, **kwargs: object) -> InferenceWorker:
    worker = InferenceWorker(model, **kwargs)  # type: ignore[arg-type]
    await worker.start()
    return worker


async def test_up_to_concurrency_calls_run_at_once_and_no_more() -> None:
    model = TracingModel(reply_delay=0.08)
    worker = await _started(model, concurrency=3)
    try:
        started = time.monotonic()
        await asyncio.gather(
            *(worker.submit_reply(f"user{i}", "s", _turns(f"m{i}"), max_new_tokens=8) for i in range(9))
        )
        elapsed = time.monotonic() - started
    finally:
        await worker.stop()
    assert model.most_running == 3
    assert elapsed < 9 * 0.08 * 0.7  # three at a time, not one after another
    assert len(model.call_threads) == 3


async def test_one_users_replies_never_overlap_and_start_in_order() -> None:
    model = TracingModel(reply_delay=0.04)
    worker = await _started(model, concurrency=4)
    try:
        jobs = [worker.submit_reply("a", "s", _turns(f"a{i}"), max_new_tokens=8) for i in range(4)]
        jobs += [worker.submit_reply("b", "s", _turns(f"b{i}"), max_new_tokens=8) for i in range(3)]
        results = await asyncio.gather(*jobs)
    finally:
        await worker.stop()
    assert all(results)
    for owner, count in (("a", 4), ("b", 3)):
        spans = sorted((span for span in model.spans if span[0].startswith(owner)), key=lambda span: span[1])
        assert [span[0] for span in spans] == [f"{owner}{i}" for i in range(count)]
        for earlier, later in itertools.pairwise(spans):
            assert earlier[2] <= later[1], "one user's replies overlapped"
    assert model.most_running == 2  # a and b side by side, each one at a time


async def test_a_flood_delays_another_user_by_at_most_one_reply_with_concurrency() -> None:
    model = TracingModel(reply_delay=0.06)
    worker = await _started(model, concurrency=2)
    try:
        jobs = [worker.submit_reply("flood", "s", _turns(f"f{i}"), max_new_tokens=8) for i in range(5)]
        jobs += [worker.submit_reply("other", "s", _turns(f"o{i}"), max_new_tokens=8) for i in range(3)]
        await asyncio.sleep(0.01)
        jobs += [worker.submit_reply(name, "s", _turns(name), max_new_tokens=8) for name in ("c1", "c2")]
        await asyncio.gather(*jobs)
    finally:
        await worker.stop()
    starts = model.starts
    for calm in ("c1", "c2"):
        floods_before = [text for text in starts[: starts.index(calm)] if text.startswith("f")]
        # f0 was running when they arrived; at most one more of the flood may go first.
        assert len(floods_before) <= 2, starts
    assert starts.index("c1") < starts.index("f2") and starts.index("c2") < starts.index("f3")


async def test_mood_reads_are_handed_out_in_arrival_order_when_batches_finish_out_of_order() -> None:
    model = TracingModel()
    worker = await _started(model, concurrency=2, mood_batch_size=1)
    resolved: list[str] = []

    async def read(text: str) -> Mood:
        mood = await worker.read_mood(text)
        resolved.append(text)
        return mood

    try:
        await asyncio.gather(read("slow first"), read("fast second"), read("fast third"))
    finally:
        await worker.stop()
    # classify records a batch when it is done: the slow one finished last, yet was handed out first.
    assert model.classify_batches[-1] == ["slow first"]
    assert resolved == ["slow first", "fast second", "fast third"]


async def test_the_bounded_queue_still_applies_with_concurrency() -> None:
    model = TracingModel(reply_delay=0.1)
    worker = await _started(model, concurrency=2, queue_size=2)
    try:
        running = [worker.submit_reply(f"r{i}", "s", _turns(f"r{i}"), max_new_tokens=8) for i in range(2)]
        await asyncio.sleep(0.02)
        assert worker.stats().in_flight == 2
        waiting = [worker.submit_reply(f"w{i}", "s", _turns(f"w{i}"), max_new_tokens=8) for i in range(2)]
        with pytest.raises(QueueFullError):
            worker.submit_reply("late", "s", _turns("late"), max_new_tokens=8)
        await asyncio.gather(*running, *waiting)
    finally:
        await worker.stop()


async def test_calls_ahead_counts_only_what_the_free_slots_cannot_take() -> None:
    model = TracingModel(reply_delay=0.1)
    worker = await _started(model, concurrency=3)
    try:
        jobs = [worker.submit_reply(f"u{i}", "s", _turns(f"u{i}"), max_new_tokens=8) for i in range(2)]
        await asyncio.sleep(0.02)
        assert worker.calls_ahead("new") == 0  # a slot is free
        jobs.append(worker.submit_reply("u2", "s", _turns("u2"), max_new_tokens=8))
        await asyncio.sleep(0.02)
        assert worker.calls_ahead("new") == 1  # every slot is busy: one call must finish first
        await asyncio.gather(*jobs)
    finally:
        await worker.stop()


async def test_the_local_model_runs_one_call_at_a_time_and_a_server_model_its_concurrency(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    local = await bootstrap(settings, model=FakeModel())
    assert local.worker.concurrency == 1
    await local.repository.close()

    class Batched(FakeModel):
        concurrency = 5

    (tmp_path / "b").mkdir()
    served = await bootstrap(make_settings(tmp_path / "b"), model=Batched())
    assert served.worker.concurrency == 5
    await served.repository.close()
