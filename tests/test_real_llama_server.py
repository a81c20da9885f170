"""The server backend against a real llama.cpp OpenAI-compatible server on loopback (``llama_cpp.server``
from the ``server`` extra, serving the bundled GGUF), through the real HTTP client.

Slow (a real model on CPU): ``pytest -m model tests/test_real_llama_server.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.llama_servers import LlamaServer, llama_cpp_available
from bot.bootstrap import bootstrap, model_options, server_options
from bot.engine import ReplySink
from bot.errors import ModelInterruptedError
from bot.model.base import ChatTurn
from bot.model.server.model import ServerModel
from bot.model.server.mood import MoodMode
from bot.settings import Settings
from bot.types import MoodLabel, ReplyKind
from tests.conftest import make_settings, message

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        not llama_cpp_available(), reason="llama_cpp.server is not installed: pip install -e '.[server]'"
    ),
]

OBVIOUS = [
    ("I just got engaged and I'm so happy!!", MoodLabel.POSITIVE),
    ("What time does the train to Boston leave?", MoodLabel.NEUTRAL),
    ("My grandmother passed away last night. I can't stop crying.", MoodLabel.NEGATIVE),
    ("今天收到了录取通知书，太开心了！", MoodLabel.POSITIVE),
    ("请问明天下午几点开会？", MoodLabel.NEUTRAL),
    ("菜太难吃了，送得又慢，再也不点了。", MoodLabel.NEGATIVE),
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama") / "server.log"
    server = LlamaServer(kind="python", context=1024, log=log).start()
    try:
        yield server
    finally:
        server.stop()


def _settings(tmp_path: Path, llama: LlamaServer, **overrides: object) -> Settings:
    values: dict[str, object] = {"inference_concurrency": 1, "model_timeout": 600.0, **overrides}
    return make_settings(tmp_path, inference_url=llama.base_url, **values)


def test_obvious_moods_get_the_local_models_labels(llama: LlamaServer, tmp_path: Path) -> None:
    from bot.model.loader import load_model

    server_model = ServerModel.connect(server_options(_settings(tmp_path, llama)))
    assert server_model.mood_mode is MoodMode.LOGPROBS
    texts = [text for text, _ in OBVIOUS]
    served = server_model.classify(texts)
    server_model.close()
    local = load_model(model_options(Settings(_env_file=None)), progress=False).classify(texts)
    assert [mood.label for mood in served] == [mood.label for mood in local]
    assert [mood.label for mood in served] == [label for _, label in OBVIOUS]
    for mood in served:
        assert 0.34 < mood.score <= 1.0 and abs(sum(p for _, p in mood.probabilities) - 1.0) < 1e-6


def test_a_streamed_reply_arrives_in_pieces(llama: LlamaServer, tmp_path: Path) -> None:
    model = ServerModel.connect(server_options(_settings(tmp_path, llama)))
    pieces: list[str] = []
    text = model.generate(
        "You are a kind friend. Answer in one short sentence.",
        [ChatTurn("user", "I finally got the job offer today!")],
        max_new_tokens=24,
        on_text=pieces.append,
    )
    model.close()
    assert text and len(pieces) > 3 and "".join(pieces).strip() == text


class _FirstPiece(ReplySink):
    def __init__(self) -> None:
        self.shown = asyncio.Event()

    async def partial(self, text: str) -> None:
        self.shown.set()


async def test_a_server_stopped_mid_reply_gives_a_kind_error_and_a_restart_answers_again(
    llama: LlamaServer, tmp_path: Path
) -> None:
    app = await bootstrap(_settings(tmp_path, llama, max_reply_tokens=160))
    async with app:
        sink = _FirstPiece()
        answering = asyncio.create_task(
            app.engine.handle(message("Tell me a long story about a brave cat."), sink)
        )
        await asyncio.wait_for(sink.shown.wait(), 300)
        llama.stop()  # killed mid-reply, as a crash would
        [reply] = await asyncio.wait_for(answering, 120)
        assert reply.kind is ReplyKind.ERROR and reply.text == ModelInterruptedError.user_message
        await asyncio.to_thread(llama.start)
        app.settings.max_reply_tokens = 16
        [again] = await app.engine.handle(message("Are you back?"))
        assert again.kind is ReplyKind.CHAT and again.text
