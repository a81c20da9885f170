"""The inference worker: model calls run on worker threads, fed from an asyncio-side queue.

Scheduling, so the bot stays fair and responsive:

* Up to ``concurrency`` calls run at once: 1 for the local model (one call at a time), more for an
  inference server, which batches the requests it has in flight.
* Mood reads are cheap; whenever a call slot is free the worker first takes every waiting mood read
  (up to ``mood_batch_size``) and runs them as one batch. Results are handed out in arrival order
  even when batches finish out of order, so a user's replies are queued in the order they wrote.
* Replies are expensive; they are served by start-time fair queueing: each reply gets a virtual
  start tag, one past its user's previous reply but never earlier than the latest reply started. The
  smallest tag runs next (ties by arrival), skipping users whose previous reply is still being
  written: one user's replies are written one at a time, in order. With one user this is plain FIFO;
  with many, users take turns, and one user's flood delays another user's message by at most one
  reply.

Model calls, token counting included, never run on the event loop. A failing call fails only its own
job; the worker goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import ModelError, ModelTimeoutError, MoodmateError, QueueFullError
from bot.model.base import ChatTurn, LanguageModel
from bot.types import Mood

logger = logging.getLogger(__name__)

#: Receives the whole reply text so far; called on the event loop.
PartialCallback = Callable[[str], None]
#: The model's token counter, ``LanguageModel.count_tokens``; only to be called on the model thread.
TokenCounter = Callable[[str], int]
#: Builds a reply's turns on the model thread, given the model's token counter (to fit history to a
#: token budget): a tokenizer is not guaranteed thread-safe, so no model call runs on the event loop.
TurnsBuilder = Callable[[TokenCounter], Sequence[ChatTurn]]


class WorkerStoppedError(MoodmateError):
    """The worker was stopped before the job ran; the message stays pending for recovery."""


@dataclass(eq=False)
class _MoodJob:
    text: str
    future: asyncio.Future[Mood]
    outcome: Mood | BaseException | None = None


@dataclass(eq=False)
class _ReplyJob:
    owner: str
    system: str
    history: tuple[ChatTurn, ...] | TurnsBuilder
    max_new_tokens: int
    future: asyncio.Future[str]
    on_partial: PartialCallback | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    start_tag: int = 0
    sequence: int = 0

    def order(self) -> tuple[int, int]:
        return (self.start_tag, self.sequence)


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A snapshot of the worker's state, for logs, tests and load tests."""

    mood_waiting: int
    replies_waiting: int
    busy: bool
    calls: int
    failures: int
    in_flight: int = 0


class InferenceWorker:
    """Runs model calls on up to ``concurrency`` worker threads, fed from the event loop."""

    def __init__(
        self,
        model: LanguageModel,
        *,
        queue_size: int = 200,
        mood_batch_size: int = 8,
        timeout: float = 120.0,
        concurrency: int = 1,
    ) -> None:
        self.model = model
        self._queue_size = queue_size
        self._mood_batch_size = mood_batch_size
        self._timeout = timeout
        self.concurrency = max(1, concurrency)
        self._moods: deque[_MoodJob] = deque()
        self._mood_order: deque[_MoodJob] = deque()
        self._replies: list[_ReplyJob] = []
        self._writing: set[str] = set()
        self._virtual_time = 0
        self._next_start: dict[str, int] = {}
        self._sequence = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._closing = False
        self._calls = 0
        self._failures = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker task and its model thread."""
        if self._task is not None:
            return
        self._closing = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="moodmate-model"
        )
        self._task = asyncio.create_task(self._run(), name="moodmate-inference-worker")

    async def stop(self, grace: float = 30.0) -> None:
        """Let the calls in flight finish (up to ``grace`` seconds); jobs not yet started fail with
        :class:`WorkerStoppedError` so their messages stay pending for the next start."""
        self._closing = True
        for mood_job in list(self._moods):
            _fail(mood_job.future, WorkerStoppedError("the inference worker stopped"))
        self._moods.clear()
        for reply_job in self._replies:
            _fail(reply_job.future, WorkerStoppedError("the inference worker stopped"))
        self._replies.clear()
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                logger.warning("Inference call still running after %.0f s at shutdown; abandoning it", grace)
                for running in list(self._running):
                    running.cancel()
                self._task.cancel()
                await asyncio.gather(self._task, *self._running, return_exceptions=True)
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- submitting work -----------------------------------------------------------------------

    def stats(self) -> WorkerStats:
        return WorkerStats(
            mood_waiting=len(self._moods),
            replies_waiting=len(self._replies),
            busy=self._in_flight > 0,
            calls=self._calls,
            failures=self._failures,
            in_flight=self._in_flight,
        )

    def _check_capacity(self) -> None:
        if self._closing or self._task is None:
            raise WorkerStoppedError("the inference worker is not running")
        waiting = len(self._moods) + len(self._replies)
        if waiting >= self._queue_size:
            raise QueueFullError("the inference queue is full")

    async def read_mood(self, text: str) -> Mood:
        """Read the mood of ``text`` alone (history-free); waits its turn in the queue."""
        self._check_capacity()
        job = _MoodJob(text=text, future=asyncio.get_running_loop().create_future())
        self._moods.append(job)
        self._mood_order.append(job)
        self._wakeup.set()
        return await job.future

    def submit_reply(
        self,
        owner: str,
        system: str,
        history: Sequence[ChatTurn] | TurnsBuilder,
        *,
        max_new_tokens: int,
        on_partial: PartialCallback | None = None,
    ) -> asyncio.Future[str]:
        """Queue the next assistant turn for ``owner``'s conversation now; await the result for its text.

        ``history`` is the conversation (ending with the user's turn), or a builder of it that runs on
        the model thread right before the reply is written (and may count tokens there).

        Cancelling the returned future drops the job, or stops its generation if it is running.
        """
        self._check_capacity()
        job = _ReplyJob(
            owner=owner,
            system=system,
            history=history if callable(history) else tuple(history),
            max_new_tokens=max_new_tokens,
            future=asyncio.get_running_loop().create_future(),
            on_partial=on_partial,
        )
        job.future.add_done_callback(lambda future: job.stop.set() if future.cancelled() else None)
        job.start_tag = max(self._next_start.get(owner, 0), self._virtual_time)
        self._next_start[owner] = job.start_tag + 1
        self._sequence += 1
        job.sequence = self._sequence
        self._replies.append(job)
        self._wakeup.set()
        return job.future

    def calls_ahead(self, owner: str) -> int:
        """How many model calls would have to finish before a reply ``owner`` asked for now could
        start: the calls in flight and the waiting replies fair queueing serves first, less the
        other free call slots."""
        tag = max(self._next_start.get(owner, 0), self._virtual_time)
        waiting = (job for job in self._replies if not job.future.done())
        ahead = self._in_flight + sum(1 for job in waiting if job.start_tag <= tag)
        return max(0, ahead - (self.concurrency - 1))

    # --- the worker loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._launch_ready()
            if self._closing and not self._running and not self._moods and not self._replies:
                return
            self._wakeup.clear()
            await self._wakeup.wait()
            # Let callers whose moods were just handed out queue their replies before the next pick,
            # so a user whose mood was just read is not overtaken by replies already waiting.
            await asyncio.sleep(0)

    def _launch_ready(self) -> None:
        """Start waiting jobs while call slots are free: mood batches first, then fair-queued replies."""
        while self._in_flight < self.concurrency:
            if self._moods:
                batch = [self._moods.popleft() for _ in range(min(self._mood_batch_size, len(self._moods)))]
                batch = [job for job in batch if not job.future.done()]
                self._publish_moods()
                if batch:
                    self._launch(self._run_mood_batch(batch))
                continue
            job = self._next_reply()
            if job is None:
                return
            self._replies.remove(job)
            self._virtual_time = max(self._virtual_time, job.start_tag)
            if not job.future.done():
                self._writing.add(job.owner)
                self._launch(self._run_reply(job))

    def _next_reply(self) -> _ReplyJob | None:
        ready = [job for job in self._replies if job.owner not in self._writing or job.future.done()]
        return min(ready, key=_ReplyJob.order) if ready else None

    def _launch(self, call: Coroutine[Any, Any, None]) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._in_slot(call))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _in_slot(self, call: Coroutine[Any, Any, None]) -> None:
        """Run ``call`` in a call slot, free again as the call returns: before the callers it handed
        results to resume (a done callback runs after them), so none of them counts it as in flight."""
        try:
            await call
        finally:
            self._in_flight -= 1
            self._wakeup.set()

    def _publish_moods(self) -> None:
        """Hand out finished mood reads in arrival order (a read waits for every earlier one)."""
        order = self._mood_order
        while order and (order[0].future.done() or order[0].outcome is not None):
            job = order.popleft()
            if job.future.done():
                continue
            if isinstance(job.outcome, BaseException):
                _fail(job.future, job.outcome)
            elif job.outcome is not None:
                job.future.set_result(job.outcome)

    async def _call(self, function: Callable[[], Any], on_timeout: Callable[[], None] | None = None) -> Any:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        self._calls += 1
        future = loop.run_in_executor(self._executor, function)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            if on_timeout is not None:
                on_timeout()
            # The thread cannot be killed; wait for it so no more than ``concurrency`` calls run.
            await asyncio.gather(future, return_exceptions=True)
            raise ModelTimeoutError(f"model call took longer than {self._timeout:.0f} s") from None

    async def _run_mood_batch(self, batch: list[_MoodJob]) -> None:
        texts = [job.text for job in batch]
        started = time.perf_counter()
        try:
            moods = await self._call(lambda: self.model.classify(texts))
            if len(moods) != len(batch):
                raise ModelError(f"classifier returned {len(moods)} moods for {len(batch)} texts")
        except BaseException as error:  # the worker must survive anything a model call raises
            self._failures += 1
            translated = _translate(error)
            logger.error("Mood batch of %d failed: %s", len(batch), type(error).__name__)
            for job in batch:
                job.outcome = translated
            if isinstance(error, asyncio.CancelledError):
                for job in batch:
                    _fail(job.future, translated)
                raise
            self._publish_moods()
            return
        logger.debug("Mood batch of %d took %.0f ms", len(batch), (time.perf_counter() - started) * 1000)
        for job, mood in zip(batch, moods, strict=True):
            job.outcome = mood
        self._publish_moods()

    async def _run_reply(self, job: _ReplyJob) -> None:
        loop = asyncio.get_running_loop()
        pieces: list[str] = []

        def on_text(piece: str) -> None:  # runs on the model thread
            pieces.append(piece)
            if job.on_partial is not None:
                text = "".join(pieces)
                loop.call_soon_threadsafe(_safe_partial, job.on_partial, text)

        def generate() -> str:
            history = job.history(self.model.count_tokens) if callable(job.history) else job.history
            return self.model.generate(
                job.system,
                history,
                max_new_tokens=job.max_new_tokens,
                on_text=on_text,
                should_stop=job.stop.is_set,
            )

        try:
            text = await self._call(generate, on_timeout=job.stop.set)
        except BaseException as error:
            self._failures += 1
            logger.error("Reply generation failed: %s", type(error).__name__)
            _fail(job.future, _translate(error))
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        finally:
            self._writing.discard(job.owner)
        if not job.future.done():
            job.future.set_result(text)


def _safe_partial(callback: PartialCallback, text: str) -> None:
    try:
        callback(text)
    except Exception:
        logger.exception("Partial-reply callback failed")


def _translate(error: BaseException) -> BaseException:
    if isinstance(error, MoodmateError):
        return error
    if isinstance(error, MemoryError):
        return ModelError("the model ran out of memory")
    if isinstance(error, asyncio.CancelledError):
        return WorkerStoppedError("the inference worker stopped")
    translated = ModelError(f"the model failed: {type(error).__name__}")
    translated.__cause__ = error
    return translated


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        # Mark retrieved: a job whose caller went away must not log "exception never retrieved".
        future.exception()
