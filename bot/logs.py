"""Logging set-up: one format, quiet chatty libraries, and secrets redacted from every record."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

#: Libraries that log request URLs (which carry the Telegram token) or payloads at INFO.
NOISY_LOGGERS = ("httpx", "httpcore", "telegram", "discord.http", "discord.gateway", "aiohttp.access")

_TELEGRAM_TOKEN = re.compile(r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{30,}")


class RedactingFilter(logging.Filter):
    """Replaces configured secrets (and anything shaped like a Telegram token) with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return _TELEGRAM_TOKEN.sub("[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def configure_logging(level: str | int, secrets: Iterable[str | None] = ()) -> None:
    """Log to stderr at ``level``; noisy libraries at WARNING; secrets never printed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
