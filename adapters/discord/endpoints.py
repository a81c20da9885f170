"""Pointing discord.py at another Discord REST API and gateway (a proxy, or the tests' fake).

discord.py 2.x has no per-client option for either address:

* REST: every request, including interaction callbacks and follow-ups (which discord.py sends
  through its webhook adapter, not ``HTTPClient.request``), builds its URL as
  ``discord.http.Route.BASE + path`` when the ``Route`` is created. ``Route.BASE`` is a class
  attribute (``https://discord.com/api/v10``), so it is the one place that redirects all of them.
* Gateway: a plain ``Client`` never asks ``GET /gateway``; it connects to
  ``DiscordWebSocket.DEFAULT_GATEWAY`` (``wss://gateway.discord.gg/``) and later to the
  ``resume_gateway_url`` sent in READY. ``DiscordWebSocket.from_client`` appends ``v=10``,
  ``encoding=json`` and ``compress=zlib-stream`` (``zstd-stream`` when zstandard is installed)
  to it, so the configured URL must not carry its own query.

Both are class attributes, hence process-wide: :class:`EndpointOverride` sets them while one
adapter runs and restores the previous values when it stops, and refuses a second adapter that
wants different addresses at the same time.
"""

from __future__ import annotations

import logging
import re

import discord
import discord.gateway
import discord.http
import yarl

from bot.errors import ConfigurationError

logger = logging.getLogger(__name__)

API_VERSION_PATH = "/api/v10"

# Process-wide state: how many running adapters share the installed addresses, which addresses,
# and discord.py's own values to put back when the last one stops.
_users = 0
_installed: tuple[str | None, yarl.URL | None] = (None, None)
_original: tuple[str, yarl.URL] | None = None


def normalize_api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/api/v10`` -> the base every route is appended to."""
    parsed = yarl.URL(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"DISCORD_API_BASE_URL must be an http(s) URL such as https://discord.com/api/v10, not {url!r}."
        )
    path = parsed.path.rstrip("/")
    if not path:
        path = API_VERSION_PATH
    elif re.fullmatch(r".*/api", path):
        path += "/v10"
    return str(parsed.with_path(path).with_query(None).with_fragment(None)).rstrip("/")


def normalize_gateway(url: str) -> yarl.URL:
    """The gateway address without a query (discord.py adds ``v``, ``encoding`` and ``compress``)."""
    parsed = yarl.URL(url.strip())
    if parsed.scheme not in ("ws", "wss") or not parsed.host:
        raise ConfigurationError(
            f"DISCORD_GATEWAY_URL must be a ws(s) URL such as wss://gateway.discord.gg, not {url!r}."
        )
    return parsed.with_query(None).with_fragment(None)


class EndpointOverride:
    """Redirects discord.py's REST base and default gateway while applied."""

    def __init__(self, api_base: str | None, gateway: str | None) -> None:
        self.api_base = normalize_api_base(api_base) if api_base else None
        self.gateway = normalize_gateway(gateway) if gateway else None
        self._applied = False

    @property
    def changes_anything(self) -> bool:
        return self.api_base is not None or self.gateway is not None

    def apply(self) -> None:
        """Install the addresses; a no-op when neither is configured."""
        global _users, _installed, _original
        if self._applied or not self.changes_anything:
            return
        wanted = (self.api_base, self.gateway)
        if _users and _installed != wanted:
            raise ConfigurationError(
                "Another Discord adapter in this process already uses different "
                "DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL values; run one per process."
            )
        if not _users:
            _original = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
            self._install()
        _users += 1
        self._applied = True

    def use_gateway(self, url: str) -> None:
        """Set the gateway after the fact (discovered with ``GET /gateway/bot`` from the custom API)."""
        self.gateway = normalize_gateway(url)
        if self._applied:
            self._install()

    def restore(self) -> None:
        """Put discord.py's own addresses back once no running adapter needs these."""
        global _users, _installed, _original
        if not self._applied:
            return
        self._applied = False
        _users -= 1
        if _users == 0 and _original is not None:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _original
            _installed, _original = (None, None), None

    def _install(self) -> None:
        global _installed
        if self.api_base is not None:
            discord.http.Route.BASE = self.api_base
            logger.info("Discord REST API: %s", self.api_base)
        if self.gateway is not None:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self.gateway
            logger.info("Discord gateway: %s", self.gateway)
        _installed = (self.api_base, self.gateway)
