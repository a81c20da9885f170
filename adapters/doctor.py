"""``moodmate doctor``: what is configured and whether it is reachable, one line each, no secrets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bot.errors import MoodmateError
from bot.settings import Settings

#: Seconds a platform's API host may take to accept a TCP connection.
CONNECT_TIMEOUT = 3.0

TELEGRAM_API = "https://api.telegram.org"
DISCORD_API = "https://discord.com/api"


async def doctor(settings: Settings, out: Callable[[str], None] = print) -> int:
    """Print the model (or server), database and platform lines; 0 when everything set up answers."""
    checks = [await asyncio.to_thread(_model_line, settings), await _database_line(settings)]
    checks += await asyncio.gather(
        _platform_line("telegram", settings.telegram_token, settings.telegram_api_base_url or TELEGRAM_API),
        _platform_line("discord", settings.discord_token, settings.discord_api_base_url or DISCORD_API),
    )
    for _, line in checks:
        out(line)
    return 0 if all(ok for ok, _ in checks) else 1


def _model_line(settings: Settings) -> tuple[bool, str]:
    if not settings.uses_inference_server:
        from bot.bootstrap import model_options
        from bot.model.loader import describe_local_model

        line = describe_local_model(model_options(settings))
        return "not installed" not in line and "No model" not in line, f"model: {line}"
    from bot.bootstrap import server_options
    from bot.model.server.model import ServerModel
    from bot.model.server.urls import display_url

    where = display_url(settings.inference_url or "")
    try:
        model = ServerModel.connect(server_options(settings))
    except MoodmateError as error:
        return False, f"model: server {where}: refused ({error})"
    try:
        facts = model.describe()
        if model.mood_mode is None:
            return False, f"model: server {where}: unreachable"
        logprobs = "yes" if facts["mood reads"] == "logprobs" else "no"
        return True, (
            f"model: server {where}: reachable, model {facts['model']}, log-probabilities {logprobs} "
            f"(mood reads by {facts['mood reads']}), concurrency {facts['concurrency']}, "
            f"API key {'set' if settings.inference_api_key else 'not set'}"
        )
    finally:
        model.close()


def _database_display(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show its scheme only
        return url.split(":", 1)[0] + ":…"


async def _database_line(settings: Settings) -> tuple[bool, str]:
    from sqlalchemy.engine import make_url

    shown = _database_display(settings.database_url)
    try:
        parsed = make_url(settings.database_url)
    except Exception:
        return False, f"database: {shown}: not a database URL"
    on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if on_disk and not Path(str(parsed.database)).expanduser().is_file():
        return True, f"database: {shown}: no file yet (created at the first start)"
    from bot.bootstrap import open_storage

    repository = open_storage(settings.database_url)
    try:
        await repository.initialize()
        stats = await repository.stats()
    except MoodmateError as error:
        return False, f"database: {shown}: unreachable ({error})"
    finally:
        await repository.close()
    return True, f"database: {shown}: reachable ({stats.users} users, {stats.messages} messages)"


async def _platform_line(name: str, token: str | None, api: str) -> tuple[bool, str]:
    if not token:
        return True, f"{name}: not configured (no token)"
    parts = urlsplit(api)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        await asyncio.wait_for(asyncio.to_thread(_connect, host, port), CONNECT_TIMEOUT + 1)
    except (OSError, TimeoutError) as error:
        return (
            False,
            f"{name}: token set, API {parts.scheme}://{host}:{port} unreachable ({type(error).__name__})",
        )
    return True, f"{name}: token set, API {parts.scheme}://{host}:{port} reachable"


def _connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
        pass
