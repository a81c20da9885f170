"""Reply prompts follow the user's language; replies never leak the classifier's role."""

from __future__ import annotations

import pytest

from bot.bootstrap import App
from bot.model.fake import FakeModel
from bot.prompts import (
    FALLBACK_REPLY_EN,
    FALLBACK_REPLY_ZH,
    REPLY_EXAMPLES_ZH,
    SYSTEM_PROMPT_EN,
    SYSTEM_PROMPT_ZH,
    clean_partial,
    clean_reply,
    is_chinese,
)
from tests.conftest import message


@pytest.mark.parametrize(
    ("text", "chinese"),
    [
        ("我今天考试没考好", True),
        ("hello there", False),
        ("今天用了 Python 写代码", True),
        ("I ate 饺子 with my friends today", False),
    ],
)
def test_language_detection(text: str, chinese: bool) -> None:
    assert is_chinese(text) is chinese


async def test_chinese_message_gets_chinese_prompt_and_examples(app: App, fake_model: FakeModel) -> None:
    await app.engine.handle(message("我今天考试没考好，有点难过。"))
    await app.engine.handle(message("I failed my exam today", user="u2"))
    (zh_system, zh_history), (en_system, _en_history) = fake_model.generate_inputs
    assert zh_system == SYSTEM_PROMPT_ZH and en_system == SYSTEM_PROMPT_EN
    assert tuple(zh_history[: len(REPLY_EXAMPLES_ZH)]) == REPLY_EXAMPLES_ZH


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Assistant: That sounds hard. What happened?", "That sounds hard. What happened?"),
        ("That sounds hard.\nUser: thanks\nAssistant: ok", "That sounds hard."),
        ("Sure!<|im_end|>garbage", "Sure!"),
        ("Sentiment: negative\nI'm sorry to hear that.", "I'm sorry to hear that."),
    ],
)
def test_clean_reply_strips_roles_and_classifier_talk(raw: str, expected: str) -> None:
    assert clean_reply(raw, "hi") == expected


def test_partial_text_is_cleaned_like_the_final_reply() -> None:
    assert clean_partial("Assistant: That sounds") == "That sounds"
    assert clean_partial("Sure.\nUser: and then") == "Sure."
    assert clean_partial("Assistant:") == ""


@pytest.mark.parametrize("raw", ["negative", " Positive. ", "neutral\n", "", "积极"])
def test_bare_label_or_empty_reply_becomes_a_kind_fallback(raw: str) -> None:
    assert clean_reply(raw, "hello") == FALLBACK_REPLY_EN
    assert clean_reply(raw, "你好呀") == FALLBACK_REPLY_ZH
