"""The reply prompt, and the clean-up that keeps the classifier's role out of replies."""

from __future__ import annotations

import re

from bot.types import MOOD_LABELS

SYSTEM_PROMPT_EN = (
    "You are moodmate, a warm, attentive companion in a chat app. Answer the user's last message "
    "in two to four short sentences: acknowledge how they seem to feel, respond to what they said, "
    "and, when it fits, ask one gentle follow-up question. Be kind and natural; no lists, no code, "
    "no role names. Always answer in the same language the user writes in."
)

SYSTEM_PROMPT_ZH = (
    "你是 moodmate，聊天软件里一位温暖、细心的陪伴者。请只用简体中文回复用户的最后一条消息，"
    "用两到四句简短的话：体会对方的感受，回应对方说的内容，合适时温和地追问一个问题。"
    "语气亲切自然，不要列清单，不要写代码，不要出现角色名称。"
)

FALLBACK_REPLY_EN = "I'm here and listening. Tell me a little more?"
FALLBACK_REPLY_ZH = "我在这儿听着呢，能再多说一点吗？"

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
_ROLE_PREFIX = re.compile(r"^\s*(assistant|moodmate|bot|ai|助手)\s*[:：]\s*", re.IGNORECASE)
_TURN_MARKER = re.compile(
    r"(<\|im_(start|end)\|>|<\|endoftext\|>|</?s>|\n\s*(user|human|assistant|system|用户)\s*[:：])",
    re.IGNORECASE,
)
_CLASSIFIER_WORDS = re.compile(
    r"(sentiment|classif|\blabel\b|positive\s*/\s*neutral|情感(分类|标签)|情绪标签)", re.IGNORECASE
)
_BARE_LABEL = re.compile(
    r"^\W*(" + "|".join(label.value for label in MOOD_LABELS) + r"|积极|中性|消极)\W*$", re.IGNORECASE
)


def is_chinese(text: str) -> bool:
    """True when the text is mostly Chinese (more CJK characters than Latin words)."""
    return len(_CJK.findall(text)) >= max(1, len(_LATIN_WORD.findall(text)))


def system_prompt_for(text: str) -> str:
    """The reply system prompt in the language of the user's message."""
    return SYSTEM_PROMPT_ZH if is_chinese(text) else SYSTEM_PROMPT_EN


def fallback_reply_for(text: str) -> str:
    return FALLBACK_REPLY_ZH if is_chinese(text) else FALLBACK_REPLY_EN


def clean_reply(reply: str, user_text: str) -> str:
    """Strip role prefixes, invented next turns and classifier talk; never return a bare label.

    Falls back to a short kind sentence in the user's language when nothing usable is left.
    """
    text = reply.replace("\r\n", "\n")
    marker = _TURN_MARKER.search(text)
    if marker is not None:
        text = text[: marker.start()]
    text = _ROLE_PREFIX.sub("", text.strip())
    kept = [line for line in text.split("\n") if not _CLASSIFIER_WORDS.search(line)]
    text = "\n".join(kept).strip()
    if not text or _BARE_LABEL.match(text):
        return fallback_reply_for(user_text)
    return text
