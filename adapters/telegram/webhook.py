"""Webhook mode: a small aiohttp server that receives Telegram's updates for python-telegram-bot.

Every request must carry ``TELEGRAM_WEBHOOK_SECRET`` in ``X-Telegram-Bot-Api-Secret-Token`` (403
otherwise). An update is acknowledged (200) only once the engine has stored its message (or once
its handling ended, for updates that store nothing): a process that dies after the answer has the
message in the database, where another process takes it over; one that dies before it never
answered, so Telegram sends the update again, to whichever process the load balancer picks. As
Telegram waits for the answer before it sends the next update, one user's messages are also stored
in the order they were written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from adapters.telegram.config import Webhook

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: Longest an update waits for its message to be stored before it is acknowledged anyway.
ACK_TIMEOUT_SECONDS = 30.0


class WebhookServer:
    """Serves ``webhook.path`` on ``webhook.host:webhook.port`` and feeds updates to ``application``."""

    def __init__(self, application: Application[Any, Any, Any, Any, Any, Any], webhook: Webhook) -> None:
        self._application = application
        self._webhook = webhook
        self._runner: web.AppRunner | None = None
        self._receipts: dict[int, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def receipt(self, update_id: int) -> asyncio.Future[None] | None:
        """Resolve this to acknowledge update ``update_id`` (None when it is not waiting)."""
        return self._receipts.get(update_id)

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/" + self._webhook.path, self._receive)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._webhook.host, self._webhook.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop accepting updates (those being handled go on; the adapter drains them)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self._webhook.secret.encode()):
            logger.warning("Telegram webhook: refused a request without the right secret")
            return web.Response(status=403)
        try:
            payload = json.loads(await request.read())
            if not isinstance(payload, dict):
                return web.Response(status=400)
            update = Update.de_json(payload, self._application.bot)
        except (ValueError, TypeError, KeyError):
            return web.Response(status=400)
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receipts[update.update_id] = receipt
        task = asyncio.create_task(self._process(update), name=f"telegram-update-{update.update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait(
                {receipt, task}, timeout=ACK_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._receipts.pop(update.update_id, None)
        return web.Response(status=200)

    async def _process(self, update: Update) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._application.process_update(update)
