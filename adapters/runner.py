"""Starts the chat platforms whose tokens are set, around one app, until a signal stops them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from adapters.base import PlatformAdapter
from bot.bootstrap import App
from bot.engine import Admit, Deliver
from bot.errors import ConfigurationError, MoodmateError
from bot.inference import WorkerStoppedError
from bot.settings import Settings
from bot.types import IncomingMessage, Platform, Reply

logger = logging.getLogger(__name__)

NO_TOKEN_MESSAGE = (
    "No chat platform is configured: set TELEGRAM_TOKEN and/or DISCORD_TOKEN (see .env.example), "
    "or talk to moodmate in the terminal with `moodmate chat`."
)


def configured_platforms(settings: Settings) -> list[Platform]:
    """The platforms whose tokens are set; raises ConfigurationError when there are none."""
    platforms = []
    if settings.telegram_token:
        platforms.append(Platform.TELEGRAM)
    if settings.discord_token:
        platforms.append(Platform.DISCORD)
    if not platforms:
        raise ConfigurationError(NO_TOKEN_MESSAGE)
    return platforms


def build_adapters(app: App) -> dict[Platform, PlatformAdapter]:
    """One adapter per configured platform, each wired to the app's engine."""
    adapters: dict[Platform, PlatformAdapter] = {}
    for platform in configured_platforms(app.settings):
        if platform is Platform.TELEGRAM:
            from adapters.telegram import TelegramAdapter

            adapters[platform] = TelegramAdapter(app.settings, app.engine)
        elif platform is Platform.DISCORD:
            from adapters.discord import DiscordAdapter

            adapters[platform] = DiscordAdapter(app.settings, app.engine)
    return adapters


async def serve(app: App, adapters: dict[Platform, PlatformAdapter], stop: asyncio.Event) -> None:
    """Start the app and adapters, answer messages left pending by a crash, run until ``stop``.

    Recovery runs once the adapters are up and then again every half lease, so that messages a
    crashed process (of this deployment) had claimed are answered once their leases expire. It
    never touches a message being answered live: those are claimed from the moment they are stored.

    If a platform is lost for good while running (its SDK gave up, e.g. on a revoked token),
    everything stops and that error is raised: a process that can no longer hear anyone should
    exit (non-zero) so that a supervisor restarts it, rather than look healthy.
    """
    await app.start()
    started: list[PlatformAdapter] = []
    watches: dict[asyncio.Task[MoodmateError], Platform] = {}
    try:
        for platform, adapter in adapters.items():
            logger.info("Starting %s", platform.value)
            await adapter.start()
            started.append(adapter)

        async def deliver(message: IncomingMessage, reply: Reply) -> None:
            adapter = adapters.get(message.platform)
            if adapter is None:
                raise ConfigurationError(f"{message.platform.value} is not running; cannot deliver")
            await adapter.deliver(message, reply)

        async def admit(message: IncomingMessage) -> bool:
            check = getattr(adapters.get(message.platform), "admits", None)
            return True if check is None else bool(await check(message))

        recovery = asyncio.create_task(
            recover_continually(app, deliver, admit, list(adapters)), name="moodmate-recovery"
        )
        for platform, adapter in adapters.items():
            watches[asyncio.create_task(adapter.wait_lost(), name=f"moodmate-{platform.value}-watch")] = (
                platform
            )
        stopping = asyncio.create_task(stop.wait(), name="moodmate-stop")
        logger.info("moodmate is running on %s", ", ".join(p.value for p in adapters))
        done, _ = await asyncio.wait({stopping, *watches}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not recovery.done():
            recovery.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await recovery
        lost = [watch for watch in watches if watch in done]
        if lost:
            error = lost[0].result()
            logger.error("%s stopped working for good (%s); moodmate stops", watches[lost[0]].value, error)
            raise error
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        logger.info("Shutting down")
        for adapter in reversed(started):
            try:
                await adapter.stop()
            except Exception:
                logger.exception("Error while stopping an adapter")
        await app.stop()


async def recover_continually(app: App, deliver: Deliver, admit: Admit, platforms: list[Platform]) -> None:
    """Run recovery now and then every half lease, until cancelled or the worker stops."""
    interval = app.settings.claim_lease_seconds / 2
    while True:
        try:
            await app.engine.recover_pending(deliver, admit, platforms)
        except WorkerStoppedError:
            return
        except Exception:
            logger.exception("Recovery of unfinished messages failed; will retry")
        await asyncio.sleep(interval)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` for a clean shutdown."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
