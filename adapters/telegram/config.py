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
