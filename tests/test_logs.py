"""Secrets never reach the logs."""

from __future__ import annotations

import io
import logging

from bot.logs import RedactingFilter, configure_logging

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_x"


def test_filter_redacts_configured_secrets_and_token_shapes() -> None:
    redacting = RedactingFilter(["discord-secret-token-value"])
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "GET %s with %s",
        (f"https://api.telegram.org/bot{TOKEN}/getMe", "discord-secret-token-value"),
        None,
    )
    redacting.filter(record)
    assert TOKEN not in record.getMessage()
    assert "discord-secret-token-value" not in record.getMessage()
    assert "[redacted]" in record.getMessage()


def test_configured_logging_hides_tokens_and_quiets_http_libraries() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging("INFO", [TOKEN])
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("httpx").info("HTTP Request: POST https://x/bot%s/getUpdates", TOKEN)
        logging.getLogger("moodmate.test").info("connecting with %s", TOKEN)
        try:
            raise RuntimeError(f"bad url bot{TOKEN}")
        except RuntimeError:
            logging.getLogger("moodmate.test").exception("failed")
        output = stream.getvalue()
        assert TOKEN not in output
        assert "HTTP Request" not in output  # httpx is at WARNING
        assert "connecting with [redacted]" in output
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
