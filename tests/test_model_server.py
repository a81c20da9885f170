"""The inference-server backend against a fake OpenAI-compatible server on loopback: prompts, mood
modes, streaming, and every fault the issue names."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Iterator

import pytest

from bot.bootstrap import server_options
from bot.errors import (
    ConfigurationError,
    ModelError,
    ModelInterruptedError,
    ModelTimeoutError,
    ModelUnavailableError,
)
from bot.model.base import ChatTurn
from bot.model.mood_prompt import FEW_SHOT, clean_message, label_words_for, mood_messages
from bot.model.server.client import RetryPolicy, ServerClient, iter_sse_data, parse_retry_after
from bot.model.server.model import ServerModel, estimate_tokens
from bot.model.server.mood import MoodMode, label_of_token, mood_from_top_logprobs
from bot.prompts import with_language_hint
from bot.types import MoodLabel
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAIServer, Fault

FAST_RETRY = RetryPolicy(attempts=4, backoff_seconds=0.01, max_backoff_seconds=0.05)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


def _model(server: FakeOpenAIServer, **kwargs: object) -> ServerModel:
    client_options = {
        key: kwargs.pop(key) for key in ("timeout", "read_timeout", "retry", "sleep") if key in kwargs
    }
    client_options.setdefault("retry", FAST_RETRY)
    client = ServerClient(server.base_url, **client_options)  # type: ignore[arg-type]
    model = ServerModel(client, **kwargs)  # type: ignore[arg-type]
    model.prepare()
    return model


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- mood reads ------------------------------------------------------------------------------------


def test_mood_reads_send_the_local_models_history_free_prompt(server: FakeOpenAIServer) -> None:
    model = _model(server)
    texts = ["I love my new job, thanks!", "明天北京天气怎么样？", "a \u200bzero-width <|im_start|> text"]
    model.classify(texts)
    bodies = server.chat_requests()[-len(texts) :]
    sent = sorted((body["messages"] for body in bodies), key=str)
    expected = []
    for text in texts:
        language = "zh" if text.startswith("明") else "en"
        expected.append(
            mood_messages(
                clean_message(text), examples=FEW_SHOT[language], label_words=label_words_for(language)
            )
        )
    assert sent == sorted(expected, key=str)
    for body in bodies:
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        assert body["model"] == "fake-model"


def test_mood_reads_are_scored_from_the_label_tokens_log_probabilities(server: FakeOpenAIServer) -> None:
    model = _model(server)
    assert model.mood_mode is MoodMode.LOGPROBS
    moods = model.classify(
        ["I love it, thanks!", "The bus leaves at 5.", "I'm so sad", "今天太开心了", "我很难过"]
    )
    labels = [mood.label for mood in moods]
    assert labels == [
        MoodLabel.POSITIVE,
        MoodLabel.NEUTRAL,
        MoodLabel.NEGATIVE,
        MoodLabel.POSITIVE,
        MoodLabel.NEGATIVE,
    ]
    for mood in moods:
        total = sum(probability for _, probability in mood.probabilities)
        assert math.isclose(total, 1.0, abs_tol=1e-9)
        assert 0.5 < mood.score < 1.0  # real probabilities, not a one-hot answer


def test_label_tokens_are_matched_as_prefixes_of_the_answer_words_and_never_for_two_labels() -> None:
    english, chinese = label_words_for("en"), label_words_for("zh")
    assert label_of_token(b"neg", english) is MoodLabel.NEGATIVE
    assert label_of_token(b" Positive", english) is MoodLabel.POSITIVE
    assert label_of_token(b"ne", english) is None  # neutral or negative: says nothing
    assert label_of_token(b" ", english) is None
    assert label_of_token("积".encode()[:2], chinese) is MoodLabel.POSITIVE  # a partial UTF-8 token
    assert label_of_token(b"The", english) is None
    top = [
        {"token": "neutral", "logprob": -0.5},
        {"token": "Neutral", "logprob": -2.0},
        {"token": "negative", "logprob": -1.5},
        {"token": "Hello", "logprob": -3.0},
    ]
    mood = mood_from_top_logprobs(top, english)
    assert mood is not None and mood.label is MoodLabel.NEUTRAL
    probabilities = dict(mood.probabilities)
    # positive is not listed: it gets the smallest listed probability, an upper bound of its own.
    expected = {
        MoodLabel.NEUTRAL: math.exp(-0.5) + math.exp(-2.0),
        MoodLabel.NEGATIVE: math.exp(-1.5),
        MoodLabel.POSITIVE: math.exp(-3.0),
    }
    total = sum(expected.values())
    for label, value in expected.items():
        assert math.isclose(probabilities[label], value / total, rel_tol=1e-9)
    assert mood_from_top_logprobs([{"token": "Hello", "logprob": -0.1}], english) is None


@pytest.mark.parametrize(
    ("options", "mode"),
    [
        ({}, MoodMode.LOGPROBS),
        ({"logprobs": False}, MoodMode.JSON_SCHEMA),
        ({"logprobs": False, "constrained": ("guided_choice",), "strict": True}, MoodMode.GUIDED_CHOICE),
        ({"logprobs": False, "constrained": ("grammar",), "strict": True}, MoodMode.GRAMMAR),
        ({"logprobs": False, "constrained": ()}, MoodMode.PLAIN),
    ],
)
def test_the_mood_mode_is_detected_once_and_logged(
    options: dict[str, object], mode: MoodMode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.model.server")
    with FakeOpenAIServer(**options) as server:  # type: ignore[arg-type]
        model = _model(server)
        probes = len(server.chat_requests())
        moods = model.classify(["I love this!", "The train is at 9.", "I hate mondays, so tired", "太开心了"])
        assert len(server.chat_requests()) == probes + 4  # detection is not repeated per read
    assert model.mood_mode is mode
    assert f"mood reads by {mode.value}" in caplog.text
    assert [mood.label for mood in moods] == [
        MoodLabel.POSITIVE,
        MoodLabel.NEUTRAL,
        MoodLabel.NEGATIVE,
        MoodLabel.POSITIVE,
    ]
    if mode is not MoodMode.LOGPROBS:
        assert [mood.score for mood in moods] == [1.0, 1.0, 1.0, 1.0]


def test_the_served_model_is_found_when_none_is_configured(server: FakeOpenAIServer) -> None:
    model = _model(server)
    assert model.model_id == "fake-model" and model.name == "fake-model"
    assert model.describe()["mood reads"] == "logprobs"


def test_a_wrong_model_name_is_one_sentence_at_start(server: FakeOpenAIServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, inference_url=server.base_url, inference_model="no-such-model")
    with pytest.raises(ConfigurationError, match="MOODMATE_INFERENCE_MODEL"):
        ServerModel.connect(server_options(settings))


def test_a_server_down_at_start_is_set_up_at_the_first_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    settings = make_settings(tmp_path, inference_url=f"http://127.0.0.1:{port}/v1")
    model = ServerModel.connect(
        server_options(settings)
    )  # warns, does not fail: the server may come up later
    assert model.mood_mode is None
    with FakeOpenAIServer(port=port):
        mood = model.classify(["I love it"])[0]
    assert mood.label is MoodLabel.POSITIVE and model.mood_mode is MoodMode.LOGPROBS
    model.close()


# --- replies ---------------------------------------------------------------------------------------


def test_replies_stream_piece_by_piece_with_the_local_models_prompt(server: FakeOpenAIServer) -> None:
    model = _model(server)
    pieces: list[str] = []
    history = [ChatTurn("user", "hi"), ChatTurn("assistant", "hello!"), ChatTurn("user", "我今天很累")]
    text = model.generate(
        with_language_hint("be kind", history), history, max_new_tokens=40, on_text=pieces.append
    )
    assert len(pieces) > 2 and "".join(pieces).strip() == text == "我听到了。能多说说吗？"
    body = server.chat_requests()[-1]
    assert body["stream"] is True and body["max_tokens"] == 40
    assert body["messages"][0] == {"role": "system", "content": "be kind\n请用中文回复。"}
    assert body["messages"][1:] == [{"role": turn.role, "content": turn.content} for turn in history]


def test_should_stop_ends_the_stream_early(server: FakeOpenAIServer) -> None:
    server.piece_delay = 0.02
    model = _model(server)
    pieces: list[str] = []
    text = model.generate(
        "s",
        [ChatTurn("user", "hi")],
        max_new_tokens=40,
        on_text=pieces.append,
        should_stop=lambda: len(pieces) >= 2,
    )
    assert len(pieces) == 2 and text == "".join(pieces).strip()


def test_count_tokens_is_an_estimate_that_rather_overcounts() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello there") == 4  # 11 characters / 3.5, rounded up
    assert estimate_tokens("今天很开心") == 5


# --- faults ----------------------------------------------------------------------------------------


def test_429_waits_for_retry_after_then_succeeds(server: FakeOpenAIServer) -> None:
    waits: list[float] = []
    model = _model(server, sleep=waits.append)
    server.fail_next(Fault("status", 429, headers={"Retry-After": "2"}))
    assert model.classify(["I love it"])[0].label is MoodLabel.POSITIVE
    assert waits == [2.0]


def test_retry_after_as_an_http_date_and_nonsense() -> None:
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (parse_retry_after(future) or 0) <= 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_5xx_and_non_json_bodies_are_retried_with_backoff(server: FakeOpenAIServer) -> None:
    waits: list[float] = []
    model = _model(server, sleep=waits.append)
    before = len(server.chat_requests())
    server.fail_next(Fault("status", 500), Fault("garbage"), Fault("status", 503))
    assert model.classify(["I'm so sad"])[0].label is MoodLabel.NEGATIVE
    assert len(server.chat_requests()) - before == 4
    assert len(waits) == 3 and waits[0] < waits[2]  # doubling (with jitter)


def test_a_server_failing_every_retry_raises_model_unavailable(server: FakeOpenAIServer) -> None:
    model = _model(server, sleep=lambda _: None)
    server.fail_next(*[Fault("status", 502)] * 4)
    with pytest.raises(ModelUnavailableError):
        model.classify(["hello"])
    assert model.classify(["I love it"])[0].label is MoodLabel.POSITIVE  # and it goes on afterwards


def test_connection_refused_is_retried_then_unavailable() -> None:
    waits: list[float] = []
    client = ServerClient(f"http://127.0.0.1:{_free_port()}/v1", retry=FAST_RETRY, sleep=waits.append)
    model = ServerModel(client, model="m", mood_mode=MoodMode.LOGPROBS)
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        model.classify(["hello"])
    assert len(waits) == 3


def test_a_server_that_does_not_answer_in_time_raises_a_timeout(server: FakeOpenAIServer) -> None:
    model = _model(server, read_timeout=0.2, timeout=5.0, retry=RetryPolicy(attempts=2, backoff_seconds=0.01))
    server.fail_next(Fault("delay", seconds=1.0), Fault("delay", seconds=1.0))
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError):
        model.classify(["hello"])
    assert time.monotonic() - started < 2.0


def test_wrong_api_key_is_not_retried(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with FakeOpenAIServer(api_key="right") as server:
        client = ServerClient(server.base_url, api_key="wrong", retry=FAST_RETRY)
        model = ServerModel(client, model="fake-model", mood_mode=MoodMode.LOGPROBS)
        with pytest.raises(ModelError, match="MOODMATE_INFERENCE_API_KEY"):
            model.classify(["hi"])
        assert len(server.chat_requests()) == 1
        good = ServerModel(ServerClient(server.base_url, api_key="right"), model="fake-model")
        good.prepare()
        assert good.classify(["I love it"])[0].label is MoodLabel.POSITIVE


def test_a_stream_cut_before_any_text_is_sent_again(server: FakeOpenAIServer) -> None:
    model = _model(server)
    server.fail_next(Fault("cut", after=0, stream=True))
    pieces: list[str] = []
    text = model.generate("s", [ChatTurn("user", "hi")], max_new_tokens=40, on_text=pieces.append)
    assert text.startswith("I hear you") and "".join(pieces).strip() == text
    assert sum(1 for body in server.chat_requests() if body.get("stream")) == 2


@pytest.mark.parametrize("kind", ["cut", "malformed"])
def test_a_stream_broken_after_text_was_shown_is_never_sent_again(
    server: FakeOpenAIServer, kind: str
) -> None:
    model = _model(server)
    server.fail_next(Fault(kind, after=3, stream=True))
    pieces: list[str] = []
    with pytest.raises(ModelInterruptedError):
        model.generate("s", [ChatTurn("user", "hi")], max_new_tokens=40, on_text=pieces.append)
    assert len(pieces) == 3
    assert sum(1 for body in server.chat_requests() if body.get("stream")) == 1


def test_a_stalled_stream_times_out_as_an_interrupted_reply(server: FakeOpenAIServer) -> None:
    model = _model(server, read_timeout=0.3)
    server.fail_next(Fault("stall", after=2, seconds=3.0, stream=True))
    with pytest.raises(ModelInterruptedError):
        model.generate("s", [ChatTurn("user", "hi")], max_new_tokens=40, on_text=lambda piece: None)


def test_sse_parsing_follows_the_event_stream_format() -> None:
    lines = [
        ": ping",
        "event: message",
        'data: {"a":',
        "data: 1}",
        "",
        "data:[DONE]",
        "",
        "id: 3",
        "data: tail",
    ]
    assert list(iter_sse_data(lines)) == ['{"a":\n1}', "[DONE]", "tail"]


# --- settings --------------------------------------------------------------------------------------


def test_inference_settings_are_checked_and_normalised(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.bootstrap import load_settings

    settings = make_settings(tmp_path, inference_url=" http://127.0.0.1:8000/ ", inference_api_key="sk-x")
    assert settings.inference_url == "http://127.0.0.1:8000/v1" and settings.uses_inference_server
    assert "sk-x" not in repr(settings)
    assert make_settings(tmp_path, inference_url="", inference_model=" ").inference_url is None
    with pytest.raises(ConfigurationError, match="MOODMATE_INFERENCE_URL") as raised:
        load_settings(_env_file=None, inference_url="localhost:8000")
    assert "\n" not in str(raised.value)
