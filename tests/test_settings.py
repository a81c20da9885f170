"""Settings: environment beats .env, blanks mean defaults, lists parse, .env.example is complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.bootstrap import load_settings
from bot.errors import ConfigurationError
from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_environment_beats_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MOODMATE_MODEL=from-dotenv\nLOG_LEVEL=DEBUG\nTELEGRAM_ALLOWED_USER_IDS=1, 2,3\n")
    monkeypatch.setenv("MOODMATE_MODEL", "from-env")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.model == "from-env"
    assert settings.log_level == "DEBUG"
    assert settings.telegram_allowed_user_ids == frozenset({"1", "2", "3"})


def test_blank_values_from_the_example_mean_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith(("MOODMATE_", "TELEGRAM_", "DISCORD_")):
            monkeypatch.delenv(key)
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.telegram_token is None and settings.discord_token is None
    assert settings.cache_dir.name == "moodmate"
    assert settings.admin_ids == frozenset()


def test_env_example_lists_every_field() -> None:
    text = (ROOT / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        aliases = field.validation_alias.choices  # type: ignore[union-attr]
        env_name = next(str(alias) for alias in aliases if str(alias).isupper())
        assert f"\n{env_name}=" in text, f"{name} ({env_name}) missing from .env.example"


def test_invalid_setting_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOODMATE_QUEUE_SIZE", "lots")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(_env_file=None)
    assert "queue_size" in str(caught.value) or "MOODMATE_QUEUE_SIZE" in str(caught.value)
    assert "\n" not in str(caught.value)
