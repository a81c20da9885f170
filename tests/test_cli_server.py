"""``moodmate doctor``, ``classify`` and ``chat`` against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.cli import classify as classify_cli
from adapters.cli import main
from adapters.doctor import doctor
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-secret-4242"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=KEY) as running:
        yield running


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_doctor_prints_one_line_each_and_no_secrets(server: FakeOpenAIServer, tmp_path: Path) -> None:
    token = "123456789:AAFakeTokenForDoctorTests_abcdefghij"
    settings = make_settings(
        tmp_path,
        inference_url=server.base_url,
        inference_api_key=KEY,
        telegram_token=token,
        telegram_api_base_url=f"http://127.0.0.1:{_closed_port()}",
        database_url="sqlite+aiosqlite:///" + str(tmp_path / "doctor.db"),
    )
    lines: list[str] = []
    code = await doctor(settings, lines.append)
    assert [line.split(":", 1)[0] for line in lines] == ["model", "database", "telegram", "discord"]
    assert "reachable, model fake-model, log-probabilities yes (mood reads by logprobs)" in lines[0]
    assert "API key set" in lines[0]
    assert "unreachable" in lines[2] and code == 1  # Telegram's API (a closed port here) does not answer
    assert lines[3] == "discord: not configured (no token)"
    assert KEY not in "\n".join(lines) and token not in "\n".join(lines)


async def test_doctor_says_when_the_server_is_down(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, inference_url=f"http://127.0.0.1:{_closed_port()}/v1")
    lines: list[str] = []
    assert await doctor(settings, lines.append) == 1
    assert lines[0].endswith(": unreachable") and lines[0].startswith("model: server http://127.0.0.1:")


async def test_doctor_passes_with_a_reachable_server_and_no_platforms(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, inference_url=server.base_url, inference_api_key=KEY)
    lines: list[str] = []
    assert await doctor(settings, lines.append) == 0
    assert lines[1].startswith("database: sqlite+aiosqlite:///") and "no file yet" in lines[1]


def test_classify_reads_moods_from_the_server(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MOODMATE_INFERENCE_URL", server.base_url)
    monkeypatch.setenv("MOODMATE_INFERENCE_API_KEY", KEY)
    monkeypatch.setattr(sys, "stdin", io.StringIO("I love this!\nthe bus is at 5\n我很难过\n"))
    assert classify_cli.main([]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == ["positive", "neutral", "negative"]
    assert [row[2] for row in rows] == ["I love this!", "the bus is at 5", "我很难过"]


def test_chat_talks_to_the_server(server: FakeOpenAIServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MOODMATE_INFERENCE_URL": server.base_url,
        "MOODMATE_INFERENCE_API_KEY": KEY,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "chat"],
        input="hello there\nI am so happy today\n",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("I hear you") == 2
    assert "[positive" in done.stdout and "Connecting to the inference server" in done.stderr
    assert KEY not in done.stdout + done.stderr


def test_doctor_command_exit_code(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOODMATE_INFERENCE_URL", server.base_url)
    monkeypatch.setenv("MOODMATE_INFERENCE_API_KEY", KEY)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    for name in ("TELEGRAM_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["doctor"]) == 0
