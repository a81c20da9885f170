"""The reply prompt, and the clean-up that keeps the classifier's role out of replies."""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.model.base import ChatTurn
from bot.model.mood_prompt import clean_message
from bot.text import is_chinese
from bot.types import MOOD_LABELS, MoodLabel

SYSTEM_PROMPT_EN = (
    "You are moodmate, the user's warm and caring friend in a chat app. Reply as yourself in one to "
    "three short sentences: show you understood how they feel, respond to what they said, then ask "
    "one gentle question. Never repeat the user's words, never make up facts you cannot know, and "
    "always answer in the language the user writes in."
)

SYSTEM_PROMPT_ZH = (
    "你是 moodmate，用户温暖体贴的朋友。请用简体中文、以你自己的身份回复一到三句话："
    "先体会对方的感受，回应对方说的内容，再温和地问一个问题。不要重复用户的话，不要编造你无从知道的事实。"
)

# A small model learns its role far better from a few exchanges than from instructions alone: these
# constant turns go before the real conversation (and, being constant, their cache is reusable).
# The sad ones (a loss, a mistake at work) were added when the model met such news with "That's
# amazing!" or a refusal. With five examples a reply also follows the language of the message when the
# conversation so far was in the other one: 1 of 112 sampled replies to 14 messages (4 of them after
# four turns in the other language) came in the wrong language, against 6 of 112 with three examples.
# They go before a first message, and before one whose language differs from the user's previous
# message; otherwise the conversation so far shows the role and the language (see ``reply_turns``).
REPLY_EXAMPLES_EN: tuple[ChatTurn, ...] = (
    ChatTurn("user", "I burned my toast this morning."),
    ChatTurn("assistant", "Oh no, not the breakfast you wanted! Did you manage to grab something else?"),
    ChatTurn("user", "My dog died last night."),
    ChatTurn("assistant", "I'm so sorry. Losing him must hurt so much. How are you holding up?"),
    ChatTurn("user", "Do you know if it will rain tomorrow?"),
    ChatTurn("assistant", "I can't check the forecast from here, sorry! Do you have plans outside tomorrow?"),
    ChatTurn("user", "I messed up my presentation at work today."),
    ChatTurn("assistant", "That's rough, I'm sorry. One bad day doesn't undo your good work. What happened?"),
    ChatTurn("user", "My sister is visiting this weekend!"),
    ChatTurn(
        "assistant", "That sounds lovely, you must be looking forward to it. What are you two planning?"
    ),
)

REPLY_EXAMPLES_ZH: tuple[ChatTurn, ...] = (
    ChatTurn("user", "我早上把面包烤糊了。"),
    ChatTurn("assistant", "哎呀，早餐不太顺利呢！后来有没有吃点别的再出门？"),
    ChatTurn("user", "我养了十年的猫昨天走了。"),
    ChatTurn("assistant", "真的很抱歉，陪了你十年，一定非常舍不得。你现在还好吗？"),
    ChatTurn("user", "你知道明天会下雨吗？"),
    ChatTurn("assistant", "我这里查不到天气预报，抱歉呀！明天你有要出门的安排吗？"),
    ChatTurn("user", "今天工作上出了个大错，被领导批评了。"),
    ChatTurn("assistant", "被批评的感觉真不好受，抱抱你。一次失误不代表你不行，发生了什么事？"),
    ChatTurn("user", "这周末我姐姐要来看我！"),
    ChatTurn("assistant", "太好了，你一定很期待吧。你们打算一起做些什么呢？"),
)

FALLBACK_REPLY_EN = "I'm here and listening. Tell me a little more?"
FALLBACK_REPLY_ZH = "我在这儿听着呢，能再多说一点吗？"

#: What is said, by the mood just read, when nothing usable is left of a reply (see ``clean_reply``).
FALLBACK_REPLIES: dict[MoodLabel, tuple[str, str]] = {
    MoodLabel.POSITIVE: ("That's lovely to hear! Tell me a little more?", "真为你高兴！能多跟我说说吗？"),
    MoodLabel.NEUTRAL: (FALLBACK_REPLY_EN, FALLBACK_REPLY_ZH),
    MoodLabel.NEGATIVE: (
        "I'm so sorry, that sounds hard. I'm here for you. Do you want to tell me more?",
        "听起来真不容易，我在这儿陪着你。愿意多跟我说说吗？",
    ),
}

_ROLE_PREFIX = re.compile(r"^\s*(assistant|moodmate|bot|ai|助手)\s*[:：]\s*", re.IGNORECASE)
_TURN_MARKER = re.compile(
    r"(<\|im_(start|end)\|>|<\|endoftext\|>|</?s>|\n\s*(user|human|assistant|system|用户)\s*[:：])",
    re.IGNORECASE,
)
_CLASSIFIER_WORDS = re.compile(
    r"(sentiment|classif|\blabel\b|positive\s*/\s*neutral|情感(分类|标签)|情绪标签)", re.IGNORECASE
)
# The bundled model's stock refusal ("I'm sorry, but I can't assist with that."), which it gave in 6 of
# 112 sampled replies to 14 chat messages, mostly to sad or angry ones: a friend never answers so.
# Matched as whole sentences (or a closing "but I can't help with that" clause) only, so "I can't
# check the forecast, sorry!" stays.
_APOSTROPHE = "['\u2019]"
_CANNOT_HELP = (
    rf"i\s*(?:can{_APOSTROPHE}?t|cannot|can not|(?:am|{_APOSTROPHE}m) (?:unable|not able) to)\s+"
    r"(?:assist|help)(?:\s+you)?\s+with\s+(?:that|this)(?:\s+request)?"
)
# Its moralizing variant ("我不能支持或鼓励你进行这样的行为。", given to a sad message about an exam).
_CANNOT_ENDORSE = (
    rf"i\s*(?:can{_APOSTROPHE}?t|cannot|can not)\s+(?:support|encourage|condone)"
    r"(?:\s+or\s+(?:support|encourage|condone))?\s+(?:this|that|such)\s+"
    r"(?:kind of\s+)?(?:behaviou?r|actions?)"
)
_SORRY_BUT = (
    rf"(?:(?:(?:i{_APOSTROPHE}?m|i am)\s+)?(?:so\s+|very\s+|really\s+)?sorry[,.!]?\s*(?:but\b)?[,\s]*)?"
)
_SORRY_BUT_ZH = r"(?:很|非常)?(?:抱歉|对不起)?[，,。！!]?\s*(?:但是?|不过)?[，,]?\s*"
_REFUSAL_SENTENCE = re.compile(
    rf"^{_SORRY_BUT}{_CANNOT_HELP}(?:[,.]?\s*sorry)?\W*$"
    rf"|^{_SORRY_BUT}{_CANNOT_ENDORSE}\W*$"
    rf"|^{_SORRY_BUT_ZH}我(?:无法|不能)(?:协助|帮助|帮)(?:你|您)?"
    r"(?:完成|处理|解决)?(?:这个|该|此)?(?:请求|问题|事情)?\W*$"
    rf"|^{_SORRY_BUT_ZH}我(?:无法|不能)(?:支持|鼓励)(?:或|和)?(?:支持|鼓励)?"
    r"(?:你|您)?(?:进行|做)?(?:这样|这种|此类)的?(?:行为|事情|做法)\W*$",
    re.IGNORECASE,
)
# "That's hard, but I can't help you with that." keeps what comes before the refusal.
_REFUSAL_CLAUSE = re.compile(rf"\s*[,;]?\s*but\s+{_CANNOT_HELP}\W*$", re.IGNORECASE)
# What is left when a refusal's apology stood in a sentence of its own ("I'm sorry. I can't help ...").
_BARE_APOLOGY = re.compile(
    rf"^\W*(?:i{_APOSTROPHE}?m|i am)?\s*(?:so\s+|very\s+|really\s+)?sorry\W*$"
    r"|^\W*(?:很|非常)?(?:抱歉|对不起)\W*$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")
_BARE_LABEL = re.compile(
    r"^\W*(" + "|".join(label.value for label in MOOD_LABELS) + r"|积极|中性|消极)\W*$", re.IGNORECASE
)


#: The last line of the reply system prompt when the user's last message is mostly Chinese.
LANGUAGE_HINT_ZH = "请用中文回复。"


def language_hint(history: Sequence[ChatTurn]) -> str:
    """An extra system line asking for Chinese when the user's last message is mostly Chinese.

    The small bundled model otherwise often answers Chinese messages in English. The message is
    judged as the model sees it (after ``clean_message``).
    """
    last = next((turn.content for turn in reversed(history) if turn.role == "user"), "")
    return LANGUAGE_HINT_ZH if is_chinese(clean_message(last, max_chars=max(len(last), 1))) else ""


def with_language_hint(system: str, history: Sequence[ChatTurn]) -> str:
    """The reply system text: ``system``, then ``language_hint(history)`` as its last line if any.

    With a hint, ``system`` is cleaned first (as the model cleans any system text, which leaves this
    result unchanged), so the prompt the model renders is what it was when the model added the hint.
    """
    hint = language_hint(history)
    if not hint:
        return system
    cleaned = clean_message(system, max_chars=max(len(system), 1))
    return f"{cleaned}\n{hint}" if cleaned else hint


def system_prompt_for(text: str) -> str:
    """The reply system prompt in the language of the user's message."""
    return SYSTEM_PROMPT_ZH if is_chinese(text) else SYSTEM_PROMPT_EN


def reply_examples_for(text: str) -> tuple[ChatTurn, ...]:
    """Example exchanges, in the language of the user's message, that show the model its role."""
    return REPLY_EXAMPLES_ZH if is_chinese(text) else REPLY_EXAMPLES_EN


def reply_turns(history: Sequence[ChatTurn]) -> list[ChatTurn]:
    """The turns of the reply prompt after its system prompt: ``history`` (the conversation, ending with
    the message to answer), after the example exchanges in that message's language when it is the
    user's first message or changes language from their previous one.

    Once the conversation shows the role and the language, the examples do more harm than good: the
    model took them for things the user had said. Measured with 10 short conversations in one language
    that end in a question about something the user said earlier (4 sampled replies each, 3 seeds): the
    reply named it in 89 of 120 without the examples, against 60 of 120 with them. Asked "what did I
    tell you first?" after three turns, 8 of 16 replies (English and Chinese) named the first real
    message without them, and 0 of 16 with them (some named the first example, a burned toast). A change
    of language needs them: replies to 4 messages in another language than the turns before came in
    the old language in 41 of 144 without the examples (even with a system line asking for the new
    language), and in 1 of 144 with them.
    """
    if not history:
        return list(reply_examples_for(""))
    *earlier, last = history
    previous = next((turn.content for turn in reversed(earlier) if turn.role == "user"), None)
    if previous is not None and is_chinese(previous) == is_chinese(last.content):
        return list(history)
    return [*reply_examples_for(last.content), *history]


def fallback_reply_for(text: str, mood: MoodLabel | None = None) -> str:
    """A short kind sentence in the language of ``text``, fitting ``mood`` when it is known."""
    english, chinese = FALLBACK_REPLIES[mood or MoodLabel.NEUTRAL]
    return chinese if is_chinese(text) else english


def without_refusals(reply: str) -> str:
    """``reply`` without its stock-refusal sentences ("I'm sorry, but I can't help with that.")."""
    sentences = [part.strip() for part in _SENTENCE_END.split(reply.strip()) if part.strip()]
    kept = [
        _REFUSAL_CLAUSE.sub(".", sentence) for sentence in sentences if not _REFUSAL_SENTENCE.match(sentence)
    ]
    if kept == sentences:
        return reply.strip()
    text = ("" if is_chinese(reply) else " ").join(kept)
    return "" if _BARE_APOLOGY.match(text) else text


def clean_partial(reply: str) -> str:
    """The part of a reply being written that is safe to show: no role prefix, no invented next
    turn, no classifier talk, no stock refusal (may be empty)."""
    text = reply.replace("\r\n", "\n")
    marker = _TURN_MARKER.search(text)
    if marker is not None:
        text = text[: marker.start()]
    text = _ROLE_PREFIX.sub("", text.strip())
    text = "\n".join(line for line in text.split("\n") if not _CLASSIFIER_WORDS.search(line)).strip()
    return without_refusals(text)


def clean_reply(reply: str, user_text: str, mood: MoodLabel | None = None) -> str:
    """Strip role prefixes, invented next turns, classifier talk and stock refusals; never return a
    bare label.

    Falls back to a short kind sentence in the user's language (fitting ``mood``, the mood just read)
    when nothing usable is left.
    """
    text = clean_partial(reply)
    if not text or _BARE_LABEL.match(text):
        return fallback_reply_for(user_text, mood)
    return text
