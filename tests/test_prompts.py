"""Reply prompts follow the user's language; replies never leak the classifier's role."""

from __future__ import annotations

import pytest

from bot.bootstrap import App
from bot.model.base import ChatTurn
from bot.model.fake import FakeModel
from bot.prompts import (
    FALLBACK_REPLIES,
    FALLBACK_REPLY_EN,
    FALLBACK_REPLY_ZH,
    LANGUAGE_HINT_ZH,
    REPLY_EXAMPLES_EN,
    REPLY_EXAMPLES_ZH,
    SYSTEM_PROMPT_EN,
    SYSTEM_PROMPT_ZH,
    clean_partial,
    clean_reply,
    is_chinese,
    reply_turns,
)
from bot.types import MoodLabel
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
    assert zh_system == f"{SYSTEM_PROMPT_ZH}\n{LANGUAGE_HINT_ZH}" and en_system == SYSTEM_PROMPT_EN
    assert tuple(zh_history[: len(REPLY_EXAMPLES_ZH)]) == REPLY_EXAMPLES_ZH


async def test_examples_go_before_a_first_message_and_a_change_of_language_only(
    app: App, fake_model: FakeModel
) -> None:
    for text in ("I got a new job!", "I start on Monday.", "我好紧张。", "我怕做不好。", "Thanks, see you"):
        await app.engine.handle(message(text))
    prompts = [history for _system, history in fake_model.generate_inputs]
    assert prompts[0] == (*REPLY_EXAMPLES_EN, ChatTurn("user", "I got a new job!"))
    assert [turn.role for turn in prompts[1]] == ["user", "assistant", "user"]  # the conversation alone
    assert prompts[1][0].content == "I got a new job!" and prompts[1][-1].content == "I start on Monday."
    assert prompts[2][: len(REPLY_EXAMPLES_ZH)] == REPLY_EXAMPLES_ZH  # changed to Chinese
    assert prompts[2][len(REPLY_EXAMPLES_ZH) :] == prompts[1] + prompts[2][-2:]
    assert prompts[3][0] == ChatTurn("user", "I got a new job!")  # still Chinese: no examples
    assert prompts[4][: len(REPLY_EXAMPLES_EN)] == REPLY_EXAMPLES_EN  # back to English


def test_examples_lead_when_the_history_has_no_earlier_user_message() -> None:
    opening = [ChatTurn("assistant", "Hi!"), ChatTurn("user", "我很开心！")]  # no earlier user message
    assert reply_turns(opening) == [*REPLY_EXAMPLES_ZH, *opening]
    assert reply_turns([]) == list(REPLY_EXAMPLES_EN)


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


@pytest.mark.parametrize(
    "raw",
    [
        "I'm sorry, but I can't assist with that.",
        "I'm sorry, but I can\u2019t help with that.",
        "I can't help with that, sorry.",
        "Sorry, I can't help with that.",
        "I'm sorry. I cannot assist with this request.",
        "抱歉，我无法协助完成这个请求。",
        "很抱歉，我无法帮助你。",
        "很抱歉，我不能支持或鼓励你进行这样的行为。",
        "I'm sorry, but I can't support or encourage this kind of behavior.",
    ],
)
def test_a_stock_refusal_becomes_the_fallback_for_the_mood_just_read(raw: str) -> None:
    english, chinese = FALLBACK_REPLIES[MoodLabel.NEGATIVE]
    assert clean_reply(raw, "my cat died this morning", MoodLabel.NEGATIVE) == english
    assert clean_reply(raw, "我男朋友跟我分手了", MoodLabel.NEGATIVE) == chinese
    assert clean_reply(raw, "I got the job!", MoodLabel.POSITIVE) == FALLBACK_REPLIES[MoodLabel.POSITIVE][0]
    assert clean_partial(raw) == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I'm sorry, that's a bit harsh. I can't help you with that.", "I'm sorry, that's a bit harsh."),
        ("The bus was 3.5 hours late. I cannot help with that.", "The bus was 3.5 hours late."),
        (
            "That's a bit hard, but I can't help you with that. What worries you?",
            "That's a bit hard. What worries you?",
        ),
        ("抱歉，我无法帮助你。不过我会一直陪着你。", "不过我会一直陪着你。"),
        (
            "很抱歉，我不能支持或鼓励你进行这样的行为。考试是学习和进步的过程，需要时间和耐心。",
            "考试是学习和进步的过程，需要时间和耐心。",
        ),
    ],
)
def test_only_the_refusal_sentences_of_a_reply_are_dropped(raw: str, expected: str) -> None:
    assert clean_reply(raw, "hi", MoodLabel.NEGATIVE) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "I can't check the forecast from here, sorry! Do you have plans outside tomorrow?",
        "I'm sorry you had to go through that. I can't imagine how it felt.",
        "虽然我无法帮你改变结果，但我会一直陪着你。",
        "Can't help with that? Of course I can: tell me what happened.",
        "I can't support this team any more, they lost again!",
        "我不能支持你的每一个决定，但我会一直陪着你。",
    ],
)
def test_replies_that_only_mention_not_being_able_to_do_something_stay(raw: str) -> None:
    assert clean_reply(raw, "hi", MoodLabel.NEGATIVE) == raw


async def test_engine_answers_a_refusal_with_the_fallback_for_the_message_mood(
    app: App, fake_model: FakeModel
) -> None:
    fake_model.reply_fn = lambda _system, _history: "I'm sorry, but I can't assist with that."
    [reply] = await app.engine.handle(message("I'm so sad and tired today"))
    assert reply.mood is not None and reply.mood.label is MoodLabel.NEGATIVE
    assert reply.text == FALLBACK_REPLIES[MoodLabel.NEGATIVE][0]
