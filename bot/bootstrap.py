"""The composition root: settings -> storage -> model -> worker -> engine, wired in one place.

Tests call :func:`bootstrap` with a fake model or repository; nothing heavy happens at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from bot.engine import Engine, utcnow
from bot.errors import ConfigurationError
from bot.inference import InferenceWorker
from bot.model.base import LanguageModel
from bot.model.options import ModelOptions, ServerOptions
from bot.repository import Repository
from bot.settings import Settings

logger = logging.getLogger(__name__)

RETENTION_INTERVAL_SECONDS = 3600.0


def load_settings(**overrides: Any) -> Settings:
    """Read settings once from the environment and ``.env``; one clear sentence if they are wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigurationError(f"Invalid settings ({problems}); see .env.example.") from None


def open_storage(database_url: str) -> Repository:
    """The repository for ``database_url`` (not yet initialized); the one place the core meets ``storage``.

    A URL moodmate cannot use raises :class:`ConfigurationError` (one sentence).
    """
    from storage import open_repository

    return open_repository(database_url)


@dataclass
class App:
    """Everything moodmate runs, ready to start and stop."""

    settings: Settings
    repository: Repository
    model: LanguageModel
    worker: InferenceWorker
    engine: Engine
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        """Start the inference worker and the retention job."""
        await self.worker.start()
        if self.settings.message_retention_days > 0:
            task = asyncio.create_task(self._retention_loop(), name="moodmate-retention")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Finish the call in flight, leave queued messages pending (and unclaimed) for the next start,
        close storage."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.worker.stop()
        await self.engine.close()
        close_model = getattr(self.model, "close", None)  # e.g. an inference server's connections
        if callable(close_model):
            close_model()
        await self.repository.close()

    async def purge_expired_texts(self) -> int:
        """Blank message texts older than the retention period; mood entries keep label, score, time."""
        cutoff = utcnow() - timedelta(days=self.settings.message_retention_days)
        purged = await self.repository.purge_message_texts(cutoff)
        if purged:
            logger.info("Retention: purged the text of %d messages", purged)
        return purged

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.purge_expired_texts()
            except Exception:
                logger.exception("Retention job failed; will retry")
            await asyncio.sleep(RETENTION_INTERVAL_SECONDS)

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def server_options(settings: Settings) -> ServerOptions:
    """The inference server ``settings`` name (``MOODMATE_INFERENCE_*``)."""
    if settings.inference_url is None:
        raise ConfigurationError("MOODMATE_INFERENCE_URL is not set.")
    key = settings.inference_api_key
    return ServerOptions(
        url=settings.inference_url,
        api_key=key.get_secret_value() if key is not None else None,
        model=settings.inference_model,
        timeout=settings.model_timeout,
        concurrency=settings.inference_concurrency,
        max_input_chars=settings.max_input_chars,
    )


def model_options(settings: Settings) -> ModelOptions:
    """What loading the model ``settings`` configure needs (see ``bot.model.loader.load_model``)."""
    return ModelOptions(
        model=settings.model,
        cache_dir=settings.cache_dir,
        quantize=settings.quantize,
        threads=settings.threads,
        max_input_chars=settings.max_input_chars,
        server=server_options(settings) if settings.uses_inference_server else None,
    )


async def bootstrap(
    settings: Settings | None = None,
    *,
    model: LanguageModel | None = None,
    repository: Repository | None = None,
) -> App:
    """Build the app. Pass ``model`` or ``repository`` to replace the real ones (tests, benchmarks)."""
    settings = settings or load_settings()
    repository = repository or open_storage(settings.database_url)
    await repository.initialize()
    if model is None:
        from bot.model.loader import load_model

        # Progress bars only on a terminal: a service's log gets no carriage-return noise.
        model = await asyncio.to_thread(load_model, model_options(settings), progress=sys.stderr.isatty())
        prepare_replies = getattr(model, "prepare_replies", None)  # e.g. weights packed in the background
        if callable(prepare_replies):
            prepare_replies()
    worker = InferenceWorker(
        model,
        queue_size=settings.queue_size,
        mood_batch_size=settings.mood_batch_size,
        timeout=settings.model_timeout,
        # An inference server batches the requests in flight; the local model runs one call at a time.
        concurrency=max(1, int(getattr(model, "concurrency", 1))),
    )
    engine = Engine(repository, worker, settings)
    return App(settings=settings, repository=repository, model=model, worker=worker, engine=engine)
