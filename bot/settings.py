"""Typed settings, read once from the environment and an optional ``.env`` file.

The environment beats ``.env``. Every field is listed, with a comment, in ``.env.example``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "qwen2.5-coder-0.5b"

IdList = Annotated[frozenset[str], NoDecode]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def default_cache_dir() -> Path:
    """Where converted models are cached: ``$XDG_CACHE_HOME/moodmate`` or ``~/.cache/moodmate``."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moodmate"


class Settings(BaseSettings):
    """All of moodmate's configuration."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- model -------------------------------------------------------------------------------
    model: str = Field(DEFAULT_MODEL, validation_alias=_env("MOODMATE_MODEL"))
    cache_dir: Path = Field(default_factory=default_cache_dir, validation_alias=_env("MOODMATE_CACHE_DIR"))
    threads: int = Field(0, ge=0, validation_alias=_env("MOODMATE_THREADS"))
    quantize: bool = Field(True, validation_alias=_env("MOODMATE_QUANTIZE"))
    max_reply_tokens: int = Field(160, ge=8, le=2048, validation_alias=_env("MOODMATE_MAX_REPLY_TOKENS"))
    history_tokens: int = Field(768, ge=64, validation_alias=_env("MOODMATE_HISTORY_TOKENS"))
    max_input_chars: int = Field(4000, ge=100, validation_alias=_env("MOODMATE_MAX_INPUT_CHARS"))
    model_timeout: float = Field(120.0, gt=0, validation_alias=_env("MOODMATE_MODEL_TIMEOUT"))

    stream_replies: bool = Field(True, validation_alias=_env("MOODMATE_STREAM_REPLIES"))

    # --- inference server (replaces the local model when set) --------------------------------
    inference_url: str | None = Field(None, validation_alias=_env("MOODMATE_INFERENCE_URL"))
    inference_api_key: SecretStr | None = Field(None, validation_alias=_env("MOODMATE_INFERENCE_API_KEY"))
    inference_model: str | None = Field(None, validation_alias=_env("MOODMATE_INFERENCE_MODEL"))
    inference_concurrency: int = Field(
        4, ge=1, le=256, validation_alias=_env("MOODMATE_INFERENCE_CONCURRENCY")
    )

    # --- queue -------------------------------------------------------------------------------
    queue_size: int = Field(200, ge=1, validation_alias=_env("MOODMATE_QUEUE_SIZE"))
    max_pending_per_user: int = Field(3, ge=1, validation_alias=_env("MOODMATE_MAX_PENDING_PER_USER"))
    mood_batch_size: int = Field(8, ge=1, validation_alias=_env("MOODMATE_MOOD_BATCH_SIZE"))
    pending_max_age_minutes: float = Field(
        60.0, ge=0, validation_alias=_env("MOODMATE_PENDING_MAX_AGE_MINUTES")
    )

    # --- storage -----------------------------------------------------------------------------
    database_url: str = Field("sqlite+aiosqlite:///moodmate.db", validation_alias=_env("DATABASE_URL"))
    message_retention_days: int = Field(0, ge=0, validation_alias=_env("MESSAGE_RETENTION_DAYS"))
    #: How long a process's claim on a message it answers holds unless renewed (it renews it
    #: every third of that while it works); a crashed process's messages are taken over after it.
    claim_lease_seconds: float = Field(60.0, ge=1, validation_alias=_env("MOODMATE_CLAIM_LEASE_SECONDS"))
    #: The name this process claims messages under; empty: host name, process id and a random part.
    instance_id: str = Field("", max_length=64, validation_alias=_env("MOODMATE_INSTANCE_ID"))

    # --- operators ---------------------------------------------------------------------------
    admin_ids: IdList = Field(frozenset(), validation_alias=_env("MOODMATE_ADMIN_IDS"))
    log_level: str = Field("INFO", validation_alias=_env("LOG_LEVEL"))
    #: Shown verbatim in the fixed crisis reply (a hotline and a text line for the operator's region).
    crisis_resources: str | None = Field(
        None, max_length=1500, validation_alias=_env("MOODMATE_CRISIS_RESOURCES")
    )

    # --- Telegram ----------------------------------------------------------------------------
    telegram_token: str | None = Field(None, validation_alias=_env("TELEGRAM_TOKEN"))
    telegram_api_base_url: str | None = Field(None, validation_alias=_env("TELEGRAM_API_BASE_URL"))
    telegram_allowed_user_ids: IdList = Field(frozenset(), validation_alias=_env("TELEGRAM_ALLOWED_USER_IDS"))
    telegram_allowed_chat_ids: IdList = Field(frozenset(), validation_alias=_env("TELEGRAM_ALLOWED_CHAT_IDS"))
    #: Webhook mode (several processes behind a load balancer): the public HTTPS address Telegram
    #: posts updates to, where this process listens (host:port), and the secret every request must carry.
    telegram_webhook_url: str | None = Field(None, validation_alias=_env("TELEGRAM_WEBHOOK_URL"))
    telegram_webhook_listen: str | None = Field(None, validation_alias=_env("TELEGRAM_WEBHOOK_LISTEN"))
    telegram_webhook_secret: str | None = Field(None, validation_alias=_env("TELEGRAM_WEBHOOK_SECRET"))

    # --- Discord -----------------------------------------------------------------------------
    discord_token: str | None = Field(None, validation_alias=_env("DISCORD_TOKEN"))
    discord_api_base_url: str | None = Field(None, validation_alias=_env("DISCORD_API_BASE_URL"))
    discord_gateway_url: str | None = Field(None, validation_alias=_env("DISCORD_GATEWAY_URL"))
    discord_allowed_guild_ids: IdList = Field(frozenset(), validation_alias=_env("DISCORD_ALLOWED_GUILD_IDS"))
    discord_allowed_channel_ids: IdList = Field(
        frozenset(), validation_alias=_env("DISCORD_ALLOWED_CHANNEL_IDS")
    )
    discord_free_channel_ids: IdList = Field(frozenset(), validation_alias=_env("DISCORD_FREE_CHANNEL_IDS"))
    #: Shards split over processes: the bot's total shard count and the ids this process runs.
    discord_shard_count: int | None = Field(None, ge=1, validation_alias=_env("DISCORD_SHARD_COUNT"))
    discord_shard_ids: IdList = Field(frozenset(), validation_alias=_env("DISCORD_SHARD_IDS"))

    @field_validator(
        "admin_ids",
        "telegram_allowed_user_ids",
        "telegram_allowed_chat_ids",
        "discord_allowed_guild_ids",
        "discord_allowed_channel_ids",
        "discord_free_channel_ids",
        "discord_shard_ids",
        mode="before",
    )
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.replace(";", ",").split(",") if part.strip())
        if isinstance(value, (list, tuple, set, frozenset)):
            return frozenset(str(item).strip() for item in value if str(item).strip())
        return value

    @field_validator(
        "telegram_token",
        "discord_token",
        "telegram_api_base_url",
        "discord_api_base_url",
        "discord_gateway_url",
        "telegram_webhook_url",
        "telegram_webhook_listen",
        "telegram_webhook_secret",
        "discord_shard_count",
        "crisis_resources",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("inference_url", "inference_api_key", "inference_model", mode="before")
    @classmethod
    def _blank_inference_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("inference_url")
    @classmethod
    def _inference_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from bot.model.server.urls import normalise_base_url

        return normalise_base_url(value)

    @property
    def uses_inference_server(self) -> bool:
        """Whether model calls go to an OpenAI-compatible server instead of a local model."""
        return self.inference_url is not None

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _blank_cache_dir_is_default(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return default_cache_dir()
        return value
