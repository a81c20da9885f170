"""Telegram settings that need interpreting: the Bot API address and the allowlists."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.errors import ConfigurationError
from bot.settings import Settings

OFFICIAL_API = "https://api.telegram.org"
_TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class ApiUrls:
    """What python-telegram-bot appends the token to: ``<root>/bot`` and ``<root>/file/bot``."""

    base_url: str
    base_file_url: str


def api_urls(setting: str | None) -> ApiUrls:
    """Interpret TELEGRAM_API_BASE_URL.

    Accepted forms, with or without a trailing slash: the server's root (``http://127.0.0.1:8081``)
    or the root followed by ``/bot`` (``http://127.0.0.1:8081/bot``), which is
    python-telegram-bot's own ``base_url`` format. Unset means Telegram's official server. The
    token is always added by the library, so a URL that already contains one is refused.
    """
    if setting is None or not setting.strip():
        root = OFFICIAL_API
    else:
        root = setting.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", root):
            raise ConfigurationError(
                "TELEGRAM_API_BASE_URL must be an http:// or https:// address, e.g. http://127.0.0.1:8081."
            )
        if _TOKEN_IN_URL.search(root) or "{token}" in root:
            raise ConfigurationError(
                "TELEGRAM_API_BASE_URL must not contain the bot token; give the server address only, "
                "e.g. http://127.0.0.1:8081."
            )
        if root.endswith("/bot"):
            root = root.removesuffix("/bot")
    return ApiUrls(base_url=f"{root}/bot", base_file_url=f"{root}/file/bot")


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Who may use the bot. An empty list allows everyone; when both lists are set, a message must
    pass both (a private chat's id is the user's id)."""

    user_ids: frozenset[str]
    chat_ids: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Allowlist:
        return cls(
            user_ids=frozenset(settings.telegram_allowed_user_ids),
            chat_ids=frozenset(settings.telegram_allowed_chat_ids),
        )

    def allows(self, user_id: int, chat_id: int) -> bool:
        if self.user_ids and str(user_id) not in self.user_ids:
            return False
        return not self.chat_ids or str(chat_id) in self.chat_ids


_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


@dataclass(frozen=True, slots=True)
class Webhook:
    """Webhook mode: Telegram posts updates to ``url``; this process listens on ``host:port`` at
    ``path`` (the URL's path, so a load balancer can pass requests on unchanged)."""

    url: str
    host: str
    port: int
    path: str
    secret: str


def webhook_from_settings(settings: Settings) -> Webhook | None:
    """Interpret TELEGRAM_WEBHOOK_URL / _LISTEN / _SECRET; None means long polling (the default)."""
    url, listen, secret = (
        settings.telegram_webhook_url,
        settings.telegram_webhook_listen,
        settings.telegram_webhook_secret,
    )
    if url is None:
        if listen is not None or secret is not None:
            raise ConfigurationError(
                "TELEGRAM_WEBHOOK_LISTEN and TELEGRAM_WEBHOOK_SECRET need TELEGRAM_WEBHOOK_URL, the public "
                "https:// address Telegram posts updates to; unset them all for long polling."
            )
        return None
    match = re.match(r"^https://[^/\s]+(?P<path>/[^\s?#]*)?$", url)
    if match is None:
        raise ConfigurationError(
            "TELEGRAM_WEBHOOK_URL must be the public https:// address Telegram posts updates to, "
            "e.g. https://bot.example.com/telegram."
        )
    if secret is None or not _SECRET.match(secret):
        raise ConfigurationError(
            "TELEGRAM_WEBHOOK_SECRET must be set in webhook mode: 1 to 256 letters, digits, _ or -, "
            "which Telegram sends with every update (e.g. from `openssl rand -hex 32`)."
        )
    host, _, port_text = (listen or "0.0.0.0:8443").rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            "TELEGRAM_WEBHOOK_LISTEN must be host:port, where this process receives the updates, "
            "e.g. 127.0.0.1:8443."
        )
    return Webhook(
        url=url,
        host=host.strip("[]"),
        port=int(port_text),
        path=(match.group("path") or "/").lstrip("/"),
        secret=secret,
    )
