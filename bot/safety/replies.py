"""The fixed crisis replies, and the check that keeps later generated replies from agreeing with
hopelessness. No text here is ever written by the model.

The replies follow safe-messaging guidance for suicide: take it seriously, do not agree or judge,
stay with the person, ask whether they are safe right now, encourage contacting someone now, give a
way to reach help, and never mention methods.
"""

from __future__ import annotations

import re

from bot.text import is_chinese

#: Used where the operator set no ``MOODMATE_CRISIS_RESOURCES``.
DEFAULT_RESOURCES_EN = (
    "If you are in immediate danger, call your local emergency number now (for example 911, 112 or 999).\n"
    "Free, confidential crisis lines in your country: https://findahelpline.com"
)
DEFAULT_RESOURCES_ZH = (
    "如果你有立即的危险，请现在就拨打当地的紧急电话（例如 110、120、999 或 119）。\n"
    "查找你所在国家或地区免费、保密的心理危机热线：https://findahelpline.com"
)

CRISIS_REPLY_EN = (
    "I'm really glad you told me, and I'm so sorry you're hurting this much. What you're feeling "
    "matters, and you don't have to go through it alone.\n\n"
    "Are you safe right now? If you might act on these thoughts, please contact a crisis line or "
    "emergency services now. If you can, reach out to someone you trust too: tell them how you're "
    "feeling, or ask them to stay with you.\n\n"
    "{resources}\n\n"
    "I'm not a crisis service, but I'm here and I'll keep listening. Would you tell me what's happening?"
)
CRISIS_REPLY_ZH = (
    "谢谢你愿意告诉我。听到你这么痛苦，我真的很难过。你的感受很重要，你不需要一个人扛着。\n\n"
    "你现在安全吗？如果你可能会伤害自己，请现在就联系心理危机热线或紧急电话。"
    "如果可以，也请联系一个你信任的人：告诉他你现在的感受，或者请他来陪着你。\n\n"
    "{resources}\n\n"
    "我不是专业的危机服务，但我在这里，会一直听你说。愿意跟我说说发生了什么吗？"
)
#: When the last reply in the chat was already a crisis reply: shorter, still with the resources.
CRISIS_REPEAT_EN = (
    "I'm still here with you, and I'm taking what you say seriously. Please reach out for help right "
    "now: a crisis line, emergency services, or someone you trust who can be with you.\n\n"
    "{resources}\n\n"
    "Are you safe at this moment? You can keep talking to me."
)
CRISIS_REPEAT_ZH = (
    "我还在这里陪着你，我很认真地对待你说的话。请现在就寻求帮助：心理危机热线、紧急电话，"
    "或者一个能来陪着你的、你信任的人。\n\n"
    "{resources}\n\n"
    "你此刻安全吗？你可以继续跟我说。"
)
#: Replaces a generated reply that agreed with hopelessness in the turns after a crisis reply.
CARING_LINE_EN = (
    "I'm here with you, and I care about what happens to you. What you're going through sounds so "
    "painful, and you deserve support right now: please reach out to someone you trust or a crisis "
    "line. Would you tell me a little about what's happening?"
)
CARING_LINE_ZH = (
    "我在这里陪着你，我很在乎你。你正在经历的事听起来非常痛苦，你值得被好好支持："
    "请联系一个你信任的人或心理危机热线。愿意跟我说说现在发生了什么吗？"
)

#: Added to the reply system prompt in the turns after a crisis reply.
SAFETY_PROMPT_EN = (
    " The user recently said they were thinking of ending their life or hurting themselves. Be gentle "
    "and caring. Never agree that things are hopeless, that they should give up, or that life is not "
    "worth living, and never mention ways to hurt oneself; gently encourage them to talk to someone "
    "they trust or a crisis line."
)
SAFETY_PROMPT_ZH = (
    "用户刚才说过想结束生命或伤害自己。请温柔、关心地回应。绝不认同“没有希望”“应该放弃”“活着没有意义”"
    "之类的想法，绝不提及任何伤害自己的方式；温和地鼓励对方联系信任的人或心理危机热线。"
)

_OPENINGS = tuple(
    template.split("\n", 1)[0][:24]
    for template in (CRISIS_REPLY_EN, CRISIS_REPLY_ZH, CRISIS_REPEAT_EN, CRISIS_REPEAT_ZH)
)

# A reply that agrees with the person's hopelessness or encourages giving up ("You're right. Life is
# ... not easy to give up", "是的，生活太累了"), or that dwells on death.
_AGREEMENT_EN = re.compile(
    r"^\W*(?:yes|yeah|yep|true|exactly|absolutely|i agree|agreed|you'?re (?:right|correct)"
    r"|that'?s (?:true|right)|fair enough|(?:that )?makes sense)\b"
    r"|\b(?:a |that'?s a |what a )?(?:great|good|fair|valid) point\b"
    r"|\b(?:you'?re right|i agree|(?:it|that) makes sense to give up|you should (?:just )?(?:give up"
    r"|let go|end it|stop trying|rest forever)|giving up (?:is|might be|would be|can be)"
    r"|(?:it'?s|that'?s|it is) (?:okay|ok|fine|understandable|normal) (?:that you |to )(?:want to )?"
    r"(?:give up|die|end it|end your life|not want to live|disappear)|(?:there'?s|there is|it has) no point"
    r"|not worth (?:it|living|fighting)|better off (?:dead|without you|gone)|rest in peace"
    r"|peace(?:ful)? (?:in|after) death|easy to give up|life is (?:meaningless|pointless|not worth)"
    r"|nothing (?:will|can) (?:ever )?(?:change|get better)|nothing (?:that )?(?:can|could) be done"
    r"|(?:there'?s|there is) nothing (?:you|we|anyone) can do"
    r"|(?:no ?one|nobody|no-one) (?:really )?(?:cares|would care|will care|would miss|will miss|loves|needs)"
    r" (?:about )?you|\bi (?:don'?t|do not|won'?t) (?:really )?care (?:about )?(?:you|what happens)"
    r"|(?:it'?s|it is|things are|you are|that is) hopeless|there is no hope)\b",
    re.IGNORECASE,
)
_AGREEMENT_ZH = re.compile(
    r"^\W*(?:是的|是啊|是呀|对的|对啊|对呀|对，|没错|确实|的确|你说得对|说得对|我同意|嗯，是)"
    r"|你说得对|放弃吧|可以放弃|就放弃|解脱|(?:活着|生活|人生)[^，。！？]{0,4}(?:没有意义|没意义|不值得)"
    r"|没有希望|没希望|一了百了|去死|离开这个世界|永远休息|没(?:有)?人(?:会)?(?:在乎|关心|在意|爱|需要)你"
    r"|(?:不会|不|不想|懒得)(?:再)?(?:在意|在乎|关心|理)你|不需要我(?:去)?(?:关心|在乎)|(?:我|你)(?:也)?不(?:太)?想活"
)


def resources_for(text: str, configured: str | None) -> str:
    """The crisis resources to show: the operator's text verbatim, else the default in the user's
    language."""
    if configured and configured.strip():
        return configured.strip()
    return DEFAULT_RESOURCES_ZH if is_chinese(text) else DEFAULT_RESOURCES_EN


def crisis_reply(text: str, resources: str | None, *, repeat: bool = False) -> str:
    """The fixed reply to a crisis message ``text``, in its language (Chinese or English, which
    every other language falls back to)."""
    chinese = is_chinese(text)
    if repeat:
        template = CRISIS_REPEAT_ZH if chinese else CRISIS_REPEAT_EN
    else:
        template = CRISIS_REPLY_ZH if chinese else CRISIS_REPLY_EN
    return template.replace("{resources}", resources_for(text, resources))


def is_crisis_reply(text: str) -> bool:
    """True when ``text`` (an assistant turn) is one of the fixed crisis replies."""
    return text.startswith(_OPENINGS)


def caring_line(text: str) -> str:
    """The fixed caring line, in the language of the user's message ``text``."""
    return CARING_LINE_ZH if is_chinese(text) else CARING_LINE_EN


def safety_prompt(system_prompt: str, text: str) -> str:
    """``system_prompt`` with the safety addendum for the turns after a crisis reply."""
    return system_prompt + (SAFETY_PROMPT_ZH if is_chinese(text) else SAFETY_PROMPT_EN)


def agrees_with_hopelessness(reply: str) -> bool:
    """True when a generated reply agrees with hopelessness, encourages giving up, or dwells on death."""
    return bool(_AGREEMENT_EN.search(reply) or _AGREEMENT_ZH.search(reply))
