"""Telegram adapter (python-telegram-bot, long polling); see :mod:`adapters.telegram.adapter`."""

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
