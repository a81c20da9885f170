"""The crisis detector: does a message express suicidal intent, a plan or means, self-harm, or a wish
not to be alive?

Phrase patterns per language, each of a *kind*:

* ``strong`` — alone enough ("I want to kill myself", "不想活了", "吃多少片药才能不再醒过来").
* ``soft`` — the same, unless the message laughs at itself ("gonna kms if this bug … lol", "so
  embarrassed I want to die").
* ``context`` — ambiguous alone ("I have them all right here", "今晚"); a crisis only when one of the
  user's recent messages in the chat was one, and the message does not say the writer is safe now.

A match is dropped when a negation stands right before it ("I would never kill myself", "我不会自杀"),
when the clause's last-named subject is another person or a work ("my friend wants to kill herself",
"我朋友想自杀", "a novel about a suicide case"), for accidents ("I cut myself shaving"), and when the
message tells of a past that is over ("I used to self-harm but I've been clean for three years").
Chinese uses 死 as an intensifier all the time (累死了, 笑死我了, 饿死了, 想死你了): no pattern matches
死 on its own; only its crisis forms (想死, 去死, 死了算了, 不想活 …) do, and 想死 followed by whom one
misses (想死你了, 想死我了) does not.

Pure and fast (regular expressions only); a message alone or with its recent context.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    STRONG = "strong"
    SOFT = "soft"
    CONTEXT = "context"


@dataclass(frozen=True, slots=True)
class Assessment:
    """The detector's answer: ``crisis`` and, when it is, the name of the pattern that decided it."""

    crisis: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.crisis


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str
    regex: re.Pattern[str]
    kind: Kind


def _en(name: str, pattern: str | tuple[str, ...], kind: Kind = Kind.STRONG) -> _Pattern:
    joined = pattern if isinstance(pattern, str) else "|".join(pattern)
    return _Pattern(name, re.compile(joined, re.IGNORECASE), kind)


def _zh(name: str, pattern: str | tuple[str, ...], kind: Kind = Kind.STRONG) -> _Pattern:
    joined = pattern if isinstance(pattern, str) else "|".join(pattern)
    return _Pattern(name, re.compile(joined), kind)


# Spelling variants people type: "im", "dont", "wanna", "gonna", "kil".
_DONT = r"(?:don'?t|do not|dnt|no longer)"
_WANT = r"(?:want(?:ed|ing)?(?: to| ta)?|wanna|wish to|would like to)"
_GOING = r"(?:going to|gonna|goin to|about to|planning to|plan to|will|'ll|ready to|decided to|have to)"
_KILL = r"(?:kill|kil|k1ll)(?:ing|in)?"
_ME = r"(?:myself|my self|meself)"
_LIVE = r"(?:live|be alive|living|exist|be here|stay alive|be around|go on|wake up|keep going)"
_ANYMORE = r"(?:\s*(?:any ?more|any ?mor|no more|now|today|tonight))?"

EN_PATTERNS: tuple[_Pattern, ...] = (
    _en(
        "kill myself",
        (
            r"\b(?:kill|kil|k1ll)(?:ing|in)? (?:myself|my self|meself)\b(?! (?:at (?:work|the gym)|working|"
            r"trying to|to (?:meet|finish|get|make)|laughing|over (?:work|this project)))",
        ),
        Kind.SOFT,
    ),
    _en("kms", r"\b(?:kms|kys)\b", Kind.SOFT),
    _en("unalive", r"\bun-?aliv(?:e|ing)\b"),
    _en("suicide", r"\bsu[i1]c[i1]d(?:e|al|le)\b|\bsewer ?slide\b"),
    _en("end my life", r"\b(?:end|ending|take|taking|ended) (?:my|my own) life\b|\btake my life\b"),
    _en(
        "end it all",
        (
            r"\b(?:end|ending) it all\b",
            r"\b(?:want to|wanna|going to|gonna|thinking (?:about|of|bout)|think (?:about|of)|feel like|"
            r"feeling like|ready to|i'?ll|i will|just|decided to|have to|need to|should) (?:just )?(?:end|"
            r"ending) (?:it|things|everything)\b(?! (?:with|between|off|here))",
        ),
    ),
    _en(
        "want to die",
        (
            r"\b(?:want(?:ed|ing)?(?: to| ta)?|wanna|wish to|would like to) (?:just )?(?:die|dye|be dead|"
            r"d1e)\b",
            r"\bi just wanna die\b",
        ),
        Kind.SOFT,
    ),
    _en(
        "wish dead",
        (
            r"\bwish (?:i|i'd) (?:was|were|had|could) (?:dead|die|just die|never been born)",
            r"\bwish(?:ing)? i (?:could|would) (?:just )?die\b",
            r"\bnever been born\b",
        ),
    ),
    _en(
        "rather be dead",
        (
            r"\b(?:rather|better off|ready to|deserve to|should just|should) (?:be )?(?:dead|die)\b(?! than)",
            r"\b(?:don'?t|do not) deserve to live\b",
        ),
    ),
    _en("easier to die", r"\b(?:easier|best|better) (?:to|if i) (?:just )?(?:die|died|was dead|were dead)\b"),
    _en("part of me", r"\bpart of me wants to die\b"),
    _en(
        "don't want to live",
        (
            r"(?:don'?t|do not|dnt|no longer) (?:really )?(?:want(?:ed|ing)?(?: to| ta)?|wanna|wish to|"
            r"would like to) (?:live|be alive|living|exist|be here|stay alive|be around|go on|wake up|keep"
            r" going)(?:\s*(?:any ?more|any ?mor|no more|now|today|tonight))?",
        ),
    ),
    _en(
        "no point living",
        (
            r"\b(?:no|what'?s the|not any) (?:point|reason|purpose)\b[^.!?]{0,20}\b(?:living|alive|going"
            r" on|go on|to live|in life|of life|of living|stay alive)\b",
        ),
    ),
    _en(
        "not worth living",
        (
            r"\b(?:life|living) (?:is ?n'?t|is not|not) worth (?:it|living)\b",
            r"\bnot worth living\b",
            r"\bnothing (?:left )?to live for\b",
        ),
    ),
    _en(
        "tired of living",
        (
            r"\b(?:tired|sick|done) (?:of|with) (?:living|being alive|life|existing)\b",
            r"\bdone living\b",
        ),
    ),
    _en(
        "can't go on",
        (
            r"\bcan'?t (?:go on|keep living|live like this|do this anymore|take it"
            r" anymore)\b(?=[^.!?]{0,40}\b(?:liv|alive|life|die|dead|end|done))",
            r"\bcan'?t go on living\b",
        ),
    ),
    _en(
        "stop existing",
        (
            r"\b(?:stop existing|cease to exist|disappear forever|sleep forever|end forever|stop forever)\b",
            r"\bpain to stop (?:forever|permanently|for good)\b",
        ),
    ),
    _en(
        "not wake up",
        (
            r"\b(?:not|never|don'?t|wouldn'?t|won'?t|hope i don'?t) (?:to )?wake up\b(?! (?:early|late|on"
            r" time|at))",
            r"\bwould it take to (?:not|never) wake\b",
        ),
    ),
    _en(
        "not be here",
        (
            r"\b(?:won'?t|will not|not going to|not gonna|don'?t plan on|not planning on) (?:be )?(?:here|"
            r"around|alive|being around|being here)\b(?=[^.!?]{0,30}(?:long|next|soon|tomorrow|much|"
            r"anymore|$))",
        ),
    ),
    _en(
        "better without me",
        (
            r"\b(?:better|happier|easier|relieved)\b[^.!?]{0,15}\bwithout me\b",
            r"\bwithout me in it\b",
            r"\b(?:relieved|happier|better off) if i (?:was|were) gone\b",
            r"\bif i (?:wasn'?t|weren'?t) (?:here|around|alive)\b",
        ),
    ),
    _en(
        "nobody would notice",
        (
            r"\b(?:no ?one|nobody|no-one)\b[^.!?]{0,15}\b(?:notice|miss|care)\b[^.!?]{0,15}\bif i (?:was|"
            r"were|died|disappeared|killed|left)\b",
        ),
    ),
    _en(
        "burden",
        (
            r"\b(?:i'?m|i am|being|i feel like) (?:such |just |only )?a burden\b",
            r"\bwon'?t be a burden\b",
            r"\ba burden (?:to|on) (?:everyone|everybody|you all|my family)\b",
        ),
    ),
    _en(
        "goodbye letters",
        (
            r"\b(?:goodbye|suicide|farewell) (?:letters?|notes?)\b",
            r"\bwr[oi]te (?:letters|notes|a letter|a note) to (?:my|everyone)\b[^.!?]{0,30}\b(?:just in"
            r" case|goodbye|sorry|when)",
            r"\bwriting my will\b",
        ),
    ),
    _en("giving things away", r"\bgiv(?:e|ing) away (?:my|all my) (?:things|stuff|belongings)\b"),
    _en(
        "goodbye",
        (
            r"\b(?:this is goodbye|said my goodbyes|saying my goodbyes|my last message|last message to)\b",
            r"^(?:goodbye|bye) (?:everyone|everybody|all|world)\b",
        ),
    ),
    _en(
        "method question",
        (
            r"\b(?:painless|quickest|easiest|fastest|best|quick) way to (?:die|kill (?:myself|yourself|"
            r"urself)|end (?:it|my life))\b",
        ),
    ),
    _en(
        "overdose",
        (
            r"\b(?:overdose|od on|lethal dose|fatal dose|is lethal|be fatal|would be fatal|bleed out|not"
            r" survive the fall)\b",
        ),
    ),
    _en(
        "pills to die",
        (
            r"\bhow (?:many|much)\b[^.!?]{0,40}\b(?:pills|tablets|tylenol|paracetamol|insulin|"
            r"sleeping)\b[^.!?]{0,40}\b(?:die|dead|lethal|fatal|kill|wake|overdose)",
        ),
    ),
    _en(
        "pills ready",
        (
            r"\b(?:take|taking|swallow) (?:them|the pills|all (?:of )?(?:the|my|them)?\s?pills?|all of"
            r" them|the whole bottle)\b",
            r"\bsav(?:e|ing|ed) (?:up )?(?:my |all my )?(?:pills|meds)\b",
        ),
    ),
    _en(
        "noose",
        (
            r"\b(?:noose|hang myself|hanging myself|tied the rope)\b",
            r"\brope\b[^.!?]{0,30}\bwhat it'?s for\b",
        ),
    ),
    _en(
        "jump",
        (
            r"\b(?:(?:going to|gonna|goin to|about to|planning to|plan to|will|'ll|ready to|decided to|have"
            r" to)|i'?m|i am|want to|wanna) (?:jump|jumping) (?:off|from|in front)\b",
            r"\b(?:standing|sitting) on (?:the |a )?(?:bridge|ledge|roof|edge)\b",
            r"\bon the roof\b[^.!?]{0,30}\bjump",
            r"\bbridge is high enough\b",
            r"\bhigh does a building\b",
            r"\btrain tracks\b[^.!?]{0,40}\b(?:step|jump|lie|walk)",
            r"\b(?:stepping|step|jump) in front of (?:a |the )?(?:train|bus|car|truck)",
        ),
    ),
    _en(
        "gun",
        (
            r"\bgun\b[^.!?]{0,20}\b(?:loaded|next to me|in my hand|to my head)\b",
            r"\b(?:don'?t|not) plan to be here\b",
        ),
    ),
    _en(
        "plan",
        (
            r"\b(?:planned|plan(?:ning)?|decided|figured out) (?:how|when) (?:i'?m|i am|i'?ll|to) (?:going"
            r" to )?(?:do it|die|end)\b",
            r"\bpicked (?:the|a) (?:date|day)\b",
            r"\bdrive my car into\b",
        ),
    ),
    _en(
        "self-harm",
        (
            r"\b(?:cut|cutting|cuttin|burn|burned|burnt|burning|hurt|hurting|harm|harming|hit|hitting|"
            r"punch|punching|starve|starving) (?:my ?self)\b",
            r"\bself[- ]?harm(?:ing|ed)?\b",
            r"\bstarted cutting\b",
            r"\bcutting again\b",
            r"\b(?:scratch|scratching)\b[^.!?]{0,20}\buntil (?:they|it) bleeds?\b",
            r"\b(?:burned|burnt|cut|hurt|hit) my (?:arm|arms|wrist|wrists|legs?|skin)\b[^.!?]{0,20}\bon"
            r" purpose\b",
            r"\bslit my wrists?\b",
        ),
    ),
    _en(
        "wish to be dead",
        (
            r"\b(?:want|wanna|wish|feel like|feeling like|think(?:ing)? (?:about|of|bout)|thought (?:about|"
            r"of)|dream(?:ing)? (?:about|of)|fantasi[sz](?:e|ing) about|plan(?:ning)? (?:to|on)|hope to|"
            r"hoping to|research(?:ing)?|look(?:ing|ed) up|ways to|how to) (?:just )?(?:to )?(?:die|dying|"
            r"be dead|being dead|death|not exist|not existing|not be alive|not being alive|not be here|not"
            r" being here|stop existing|disappear forever|not wake up|never wake up)\b(?! (?:of|from)"
            r" (?:laughter|laughing|embarrassment|boredom|cringe|shame|cuteness))",
        ),
        Kind.SOFT,
    ),
    _en("out of life", r"\b(?:want|wanna|need) out of (?:this|my) life\b|\bout of this life for good\b"),
    _en(
        "keep going",
        (
            r"\b(?:can'?t|cannot|don'?t think i can|not sure i can|unable to) (?:go on|keep going|carry on|"
            r"hold on|keep living|do this anymore|do this any longer)(?:\s+(?:anymore|any longer|like this|"
            r"much longer))?\s*(?:[.!,]|$)",
            r"\bstrong enough to stay\b",
            r"\breason to stay\b",
        ),
        Kind.SOFT,
    ),
    _en(
        "better off",
        (
            r"\b(?:they|everyone|everybody|you|you all|the world|my family|people)(?:'?d| would) (?:all"
            r" )?be (?:better off|happier|fine)(?! with)(?:\s*(?:without me|if i)\b|\s*(?:[.!,]|$))",
        ),
    ),
    _en("waste of space", r"\b(?:i'?m|i am) (?:just )?a waste of (?:space|air|oxygen|life)\b", Kind.SOFT),
    _en(
        "only way out",
        (
            r"\b(?:no way out|only way out|only option|only solution|only answer|only"
            r" escape)\b[^.!?]{0,30}\b(?:die|dying|death|dead|suicide|end it)",
            r"\b(?:die|dying|death|suicide|ending it)\b[^.!?]{0,30}\b(?:only way out|only option|only"
            r" solution|only answer|only escape|no way out)\b",
        ),
    ),
    _en(
        "if i died",
        (
            r"\bif i (?:died|was gone|were gone|disappeared|killed myself|wasn'?t here|weren'?t"
            r" here)\b[^.!?]{0,30}\b(?:no ?one|nobody|no-one|anyone|anybody)\b[^.!?]{0,15}\b(?:care|notice|"
            r"miss)",
            r"\b(?:would|will) (?:anyone|anybody) (?:even )?(?:care|notice|miss me) if i\b",
        ),
    ),
    _en(
        "stop forever",
        (
            r"\b(?:want|wanna|need) (?:it |everything |it all )?(?:to )?(?:all )?(?:stop|"
            r"end)\b[^.!?]{0,30}\b(?:forever|for good|permanently)\b",
        ),
    ),
    _en(
        "took pills",
        (
            r"\b(?:took|taken|swallowed|swallow|downed) (?:a bunch|a lot|all|too many|the whole bottle|a"
            r" handful|loads|dozens|\d{2,})(?: of)?(?: my| the| them| those)?(?: pills| tablets| meds|"
            r" sleeping pills| painkillers)?\b",
        ),
    ),
    _en(
        "enough to die",
        (
            r"\b(?:enough|how (?:many|much|high|far|long|deep)|what (?:dose|amount))\b[^.!?]{0,50}\b(?:to"
            r" die|die|kill (?:me|you|myself|yourself|a person|someone)|lethal|fatal|deadly|not survive|not"
            r" wake)\b",
            r"\b(?:deadly|lethal|fatal|poisonous) if (?:you|i|someone) (?:drink|take|swallow|eat|mix)",
        ),
    ),
    _en(
        "means ready",
        (r"\b(?:knife|rope|gun|blade|razor|noose) (?:is |are )?(?:ready|prepared|in my hand)\b",),
    ),
    _en(
        "keep cutting",
        (
            r"\b(?:keep|kept|started|start|been|still|began) cutting\b(?! (?:the|my hair|it|them|down|back|"
            r"class|off|corners|school|carbs|sugar|out))",
            r"\bpunish(?:ing)? myself\b",
        ),
    ),
    _en(
        "not much longer",
        (
            r"\b(?:not|won'?t|will not|wont)\b[^.!?]{0,15}\b(?:be|being)\b[^.!?]{0,30}\b(?:much|any)"
            r" longer\b",
            r"\bnot (?:be|being) (?:here|around|alive) for long\b",
        ),
    ),
    _en(
        "give up on life",
        (
            r"\b(?:giv(?:e|ing) up|gave up|finished|done|through) (?:on|with) (?:life|living|being alive|"
            r"everything and everyone)\b",
            r"\bno future for me\b",
        ),
    ),
    _en("made my peace", r"\bmade (?:my )?peace\b(?! with (?:it|the|that|my (?:ex|job)))"),
    _en(
        "point of living",
        (
            r"\b(?:no|what'?s|whats|what is|is there|see the|any|lost)\b(?: even| really| the| any)*"
            r" (?:point|reason|purpose)\b[^.!?]{0,20}\b(?:living|being alive|alive|to live|in life|of life|"
            r"going on|existing|of me|waking up)\b",
        ),
    ),
    _en(
        "death sounds peaceful",
        (
            r"\b(?:dying|death|being dead|not existing|not being here)\b[^.!?]{0,20}\b(?:peaceful|a relief|"
            r"relief|appealing|welcome|freedom|so nice|better than this)\b",
        ),
    ),
    _en(
        "cutting helps",
        (
            r"\bcutting\b[^.!?]{0,25}\b(?:helps|only thing|makes me feel|calms)\b",
            r"\b(?:only thing that helps|helps me cope|how i cope) is (?:cutting|hurting myself|burning"
            r" myself)\b",
            r"\bcarv(?:e|ed|ing) (?:into )?my (?:arm|arms|skin|wrist|wrists|legs?|thighs?)\b",
            r"\buntil (?:i|it|they) bleed\b",
            r"\b(?:my|own) (?:arm|arms|wrist|wrists|thigh|thighs|skin|legs?)\b[^.!?]{0,25}\b(?:razor|"
            r"blade)\b",
            r"\b(?:razor|blade)\b[^.!?]{0,25}\bmy (?:arm|arms|wrist|wrists|thigh|thighs|skin|legs?)\b",
        ),
    ),
    _en("want out", r"\b(?:i just|i) want out\s*(?:[.!,]|$)|\bnever (?:been )?born\b", Kind.SOFT),
    _en(
        "jump (end)",
        (r"\b(?:thinking (?:about|of)|want to|going to|gonna|about to) (?:jump|jumping)\s*(?:[.!,]|$)",),
    ),
    # Ambiguous alone; a crisis only after a recent crisis message in the chat.
    _en(
        "means (in context)",
        (r"\b(?:pills|rope|gun|knife|blade|razor|meds|them all|bottle|bridge|roof)\b",),
        Kind.CONTEXT,
    ),
    _en("when (in context)", r"\b(?:tonight|today|now|tomorrow|soon|do it)\b", Kind.CONTEXT),
    _en(
        "not safe (in context)",
        (r"^\W*(?:no|nope|not really|not safe|i'?m not safe|i don'?t know|idk)\b",),
        Kind.CONTEXT,
    ),
)

ZH_PATTERNS: tuple[_Pattern, ...] = (
    # 想死: not 想死你了 / 想死我了 / 想死你们了 (missing someone, or being missed, very much).
    _zh(
        "想死",
        (
            r"(?<!尴尬得)(?<!尴尬到)(?<!丢脸得)(?<!丢脸到)(?<!羞得)(?<!笑得)(?<!无聊得)(?<!烦得)想(?:要|"
            r"去)?死(?!你|您|妳|他|她|它|大家|宝宝|人|我[了啦啊啦呀哦咯惹]|我这|我那|我的)",
        ),
    ),
    _zh("去死", r"(?<![你您他她])去死(?!吧)|(?:我|想|要|该|应该|就|不如)去死"),
    _zh(
        "不想活",
        (
            r"不(?:太|怎么|是很)?(?:想|要|愿|愿意|打算)(?:再)?(?:继续)?活(?![动在得跃泼儿])",
            r"活不下去",
            r"不想活着",
            r"活不成了",
            r"不想存在",
            r"不想再?坚持(?:活|下去)",
        ),
    ),
    _zh(
        "自杀",
        (
            r"自杀(?!式|小队|攻击|袭击)",
            r"紫砂",
            r"轻生",
            r"寻死",
            r"自尽",
            r"自我了断",
            r"了结自己",
            r"结束(?:自己|我)的?生命",
            r"结束生命",
            r"想\s?s[i1](?![a-z])",
            r"想鼠",
        ),
    ),
    _zh(
        "一死了之",
        (
            r"一死了之",
            r"一了百了",
            r"死了(?:算了|就好|就解脱|就不用)",
            r"不如死",
            r"宁[愿可]死",
            r"宁[愿可]去死",
            r"死掉算了",
            r"想死掉",
            r"死了也(?:没人|无所谓)",
            r"该死的是我",
            r"我该死",
        ),
    ),
    _zh(
        "结束这一切",
        (
            r"结束(?:这)?一切",
            r"(?:只想|想要|想)解脱",
            r"永远睡着",
            r"离开这个世界",
            r"离开人世",
            r"离开人间",
            r"彻底解脱",
            r"彻底离开",
            r"想走了",
            r"想消失",
            r"永远(?:地)?消失",
            r"不想再?醒",
            r"不再醒",
            r"别再醒",
            r"再也不想醒",
            r"永远睡下去",
            r"睡着了?就别",
            r"不要再醒",
        ),
    ),
    _zh(
        "活着没意思",
        (
            r"活着(?:真|好|太|也)?(?:没|沒)(?:有)?(?:意思|意义|意義)",
            r"活着有什么意义",
            r"活着有啥意思",
            r"活着(?:好|太|真)?累[^。！？]{0,8}(?:不想|坚持|撑)",
            r"人间不值得[^。！？]{0,6}(?:走|死|离开)",
        ),
    ),
    _zh(
        "没有我更好",
        (
            r"没有我[^。！？，]{0,10}(?:更好|轻松|无所谓|开心)",
            r"我走了[^。！？]{0,10}(?:轻松|更好|不会再|解脱)",
            r"等我走了",
            r"我不在了",
            r"如果我不在",
            r"不如不在",
            r"我消失了[^。！？]{0,10}(?:没人|不会)",
            r"我死不死",
            r"我死了[^。！？]{0,6}(?:没人|也没)",
        ),
    ),
    _zh("负担", r"(?:我|活着)(?:就)?是(?:个|一个)?(?:负担|累赘|多余的)|大家的(?:负担|累赘)|活着是多余"),
    _zh(
        "遗书",
        (
            r"遗书",
            r"遗言",
            r"写好了?(?:给家人|给你们|给爸妈)的信",
            r"跟所有人告别",
            r"和所有人告别",
            r"最后一次(?:跟|和)你",
            r"不会再打扰你",
            r"把东西都送人",
        ),
    ),
    _zh(
        "方法",
        (
            r"(?:吃|喝)多少[^。！？]{0,6}(?:药|片|安眠)",
            r"安眠药[^。！？]{0,8}(?:死|多少|攒|吃了)",
            r"(?:几|多高的?)楼[^。！？]{0,6}(?:死|跳)",
            r"怎么死",
            r"死得(?:快|痛快)",
            r"无痛",
            r"(?:上吊|割腕|烧炭|跳楼|跳河|跳江|跳海|服毒|喝农药)",
            r"农药",
            r"买好了?炭",
            r"(?:攒|存|囤|买)[^。！？]{0,6}(?:安眠药|药片|刀片|炭)",
            r"(?:攒|存)[^。！？]{0,4}药",
            r"药[^。！？]{0,4}(?:攒|存)起来",
            r"绳子[^。！？]{0,6}(?:准备|买)",
            r"准备好?[^。！？]{0,3}绳子",
            r"(?:天台|楼顶|桥上|楼上|河边|江边)[^。！？]{0,10}(?:跳|准备|想)",
            r"(?:站在|我在)(?:天台|楼顶)",
            r"割哪里",
            r"割多深",
            r"想好怎么死",
            r"跳下去",
        ),
    ),
    _zh(
        "自残",
        (
            r"自残",
            r"自伤",
            r"割(?:了)?自己",
            r"划(?:了)?自己",
            r"伤害自己",
            r"烫自己",
            r"打自己",
            r"割手",
            r"划手",
            r"手腕上[^。！？]{0,10}(?:伤|划|割)",
        ),
    ),
    _zh(
        "结束自己",
        (
            r"结束(?:掉)?自己(?![的地])",
            r"我死了吧",
            r"让我死",
            r"(?:干脆|索性|还是)死了",
            r"不想(?:再)?活在这(?:个)?世界",
            r"(?:没有|没|找不到|失去了?)[^。！？，]{0,4}活下去的(?:理由|勇气|意义|动力)",
        ),
    ),
    _zh(
        "后事",
        (
            r"安排好?(?:了)?后事",
            r"交代(?:好)?(?:了)?后事",
            r"(?:没有|没)(?:什么)?(?:值得)?(?:我)?留恋",
            r"了无牵挂",
            r"无牵无挂",
            r"对不起(?:所有人|大家|爸妈|你们)[^。！？]{0,10}再见",
            r"再见了[^。！？]{0,6}(?:这个世界|所有人|大家)",
            r"永别",
            r"再也不会(?:痛|疼|难过)的地方",
            r"(?:想|要)去(?:天堂|另一个世界)",
            r"不会痛的(?:世界|地方)",
        ),
    ),
    _zh("活着无意义", r"活着[^，。！？]{0,6}(?:没|沒|无)[^，。！？]{0,4}(?:意义|意思|盼头|希望)"),
    _zh(
        "吃药",
        (
            r"(?:吃|吞|喝)(?:了|掉|下)?(?:一整瓶|一瓶|整瓶|全部的?|所有的?|很多|一把|"
            r"一堆)[^。！？]{0,4}(?:药|片)",
            r"割脉",
            r"卧轨",
            r"开煤气",
            r"烧炭",
        ),
    ),
    # Ambiguous alone.
    _zh("工具（上下文）", r"药|绳|刀|炭|准备好|买好|遗书", Kind.CONTEXT),
    _zh("时间（上下文）", r"今晚|今天|现在|明天|马上|就做|动手", Kind.CONTEXT),
    _zh("不安全（上下文）", r"^\W*(?:不|没有|不安全|不太好|不知道)\W*$", Kind.CONTEXT),
)

# Right before a match: "I would never kill myself", "I'm not suicidal", "我不会自杀", "我没有自杀的想法".
_EN_NEGATION = re.compile(
    r"\b(?:not|never|no longer|don'?t|do not|won'?t|wouldn'?t|will not|didn'?t|isn'?t|nor)"
    r"((?:\s+(?!but\b|and\b|so\b|just\b|know\b|why\b|if\b|care\b|even\b|think\b|see\b|stop\b)[\w']+){0,3})\s*$",
    re.IGNORECASE,
)
_ZH_NEGATION = re.compile(
    r"(?:不会|不要|没有|没|不是|才不|从没|从来没|从不|并不|绝不|不(?![住了停够]))"
    r"(?:有|想|会|打算)?(?:过)?[^，。！？,.!?]{0,2}$"
)
# Who a clause is about: the subject named last before a match decides ("my mom doesn't know I'm
# suicidal" is the writer's; "I think my friend is suicidal" and "a novel about a suicide case" are not).
_EN_SUBJECT = re.compile(
    r"\b(?P<self>i|i'?m|i'?ve|i'?d|i'?ll|me|my ?self|im|ive)\b"
    r"|\b(?P<other>he|she|they|someone|somebody|people|anyone|my (?:friend|brother|sister|mom|mum|dad|son"
    r"|daughter|partner|boyfriend|girlfriend|wife|husband|student|classmate|coworker|colleague|cousin|aunt"
    r"|uncle)s?|(?:his|her|their) \w+|character|hero|villain|novel|book|movie|film|show|series|story"
    r"|documentary|song|poem|poems|essay|class|school|lesson|talk|lecture|article|news|game|plot|hotline"
    r"|prevention|warning signs|statistics|rates?|about a|on a)\b",
    re.IGNORECASE,
)
#: Right after a match, a word that makes it a topic ("suicide prevention", "a suicide case").
_EN_TOPIC_AFTER = re.compile(
    r"^\W{0,2}(?:(?:[\w']+ ){0,4}(?:topic|essay|paper|research|project|presentation)\b"
    r"|prevention|hotline|case|cases|squad|doors?|run|runs|sprint|bomb\w*|attack\w*|mission|rates?"
    r"|statistics|awareness|documentary|novel|movie|book|story|scene|ideation in (?:teens|students))\b",
    re.IGNORECASE,
)
_ZH_SUBJECT = re.compile(
    r"(?P<self>我(?!朋友|同学|同事|妈|爸|哥|姐|弟|妹|家|们的))"
    r"|(?P<other>朋友|同学|同事|他|她|别人|(?<!所)有人|家人|孩子|明星|主角|男主|女主|小说|电影|电视剧|剧里|新闻|讲座"
    r"|课上|课讲|预防|关于|游戏|书里|书中|如何帮助|怎么帮|历史|屈原)"
)
_ZH_TOPIC_AFTER = re.compile(
    r"^[^，。！？]{0,4}(?:案|小说|电影|讲座|新闻|的书|倾向的(?:人|同学)|预防|问题的研究)"
)
# Accidents are not self-harm ("I cut myself shaving", "I burned myself on the stove").
_EN_ACCIDENT = re.compile(
    r"\b(?:shaving|cooking|chopping|accident\w*|stove|oven|the iron|gym|workout|running|playing|fell|skiing"
    r"|paper cut|kitchen|sunburn\w*|slipped|tripped)\b",
    re.IGNORECASE,
)
_ZH_ACCIDENT = re.compile(r"不小心|切菜|做饭|摔|运动|健身|意外")

# The message tells of a past that is over.
_EN_PAST = re.compile(r"\b(?:used to|years ago|last year|in the past|back then|when i was)\b", re.IGNORECASE)
_EN_RECOVERED = re.compile(
    r"\b(?:clean for|better now|better place|much better|(?:therapy|it|meds|treatment|talking) (?:really )?"
    r"helped|recovered|i'?m (?:ok|okay|fine) now|proud)\b",
    re.IGNORECASE,
)
_ZH_PAST = re.compile(r"以前|过去|曾经|那时候|之前")
_ZH_RECOVERED = re.compile(r"好多了|已经好了|走出来了|现在很好|现在好了|不会了")
# Says the writer is safe now: a context cue alone ("I'm safe for now") then decides nothing.
_SAFE_NOW = re.compile(
    r"\b(?:i'?m|i am|im|i feel|feeling) (?:safe|ok|okay|fine|alright|all right|better)\b"
    r"|(?:我|现在)[^，。！？]{0,4}(?:安全|没事|好多了|好一点)"
)
# The message laughs at itself, or at its own embarrassment (for ``soft`` patterns only).
_LAUGH = re.compile(
    r"\b(?:lol+|lmao+|lmfao|rofl|haha+|hahah\w*|jk|j/k|xd|embarrass\w*|cringe\w*|mortified)\b"
    r"|😂|🤣|😅|💀|😆|😹|🙃|\b(?:of|from) (?:laughter|laughing|embarrassment|boredom|shame)\b",
    re.IGNORECASE,
)
_CLAUSE_EN = re.compile(r"[.!?;,]|\bbut\b", re.IGNORECASE)
_CLAUSE_ZH = re.compile(r"[，。！？；,.!?;\s]|但是|可是|不过")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_SPACES = re.compile(r"\s+")
_REPEATS = re.compile(r"([a-z])\1{2,}")


def normalize(text: str) -> str:
    """Lower case, NFKC (full-width to half-width), plain apostrophes, squeezed spaces and repeats."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(char for char in text if unicodedata.category(char) not in ("Cf", "Cc") or char == "\n")
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").lower()
    text = _REPEATS.sub(r"\1\1", text)
    return _SPACES.sub(" ", text).strip()


def _clause_before(text: str, start: int, splitter: re.Pattern[str]) -> str:
    before = text[:start]
    parts = splitter.split(before)
    return parts[-1] if parts else before


def _negated(text: str, start: int, chinese: bool) -> bool:
    if chinese:
        return _ZH_NEGATION.search(_clause_before(text, start, _CLAUSE_ZH)) is not None
    clause = _clause_before(text, start, _CLAUSE_EN)
    return _EN_NEGATION.search(clause) is not None


def _about_someone_else(text: str, start: int, end: int, chinese: bool) -> bool:
    subject, topic_after = (_ZH_SUBJECT, _ZH_TOPIC_AFTER) if chinese else (_EN_SUBJECT, _EN_TOPIC_AFTER)
    if topic_after.search(text[end:]):
        return True
    clause = _clause_before(text, start, _CLAUSE_ZH if chinese else _CLAUSE_EN)
    subjects = list(subject.finditer(clause))
    return bool(subjects) and subjects[-1].group("other") is not None


def _matches(text: str, patterns: Sequence[_Pattern], chinese: bool) -> list[tuple[_Pattern, re.Match[str]]]:
    found = []
    for pattern in patterns:
        for match in pattern.regex.finditer(text):
            if pattern.kind is not Kind.CONTEXT:
                if _negated(text, match.start(), chinese):
                    continue
                if _about_someone_else(text, match.start(), match.end(), chinese):
                    continue
                accident = _ZH_ACCIDENT if chinese else _EN_ACCIDENT
                if pattern.name in ("self-harm", "自残") and accident.search(text):
                    continue
            found.append((pattern, match))
            break
    return found


def _over(text: str) -> bool:
    return bool(
        (_EN_PAST.search(text) and _EN_RECOVERED.search(text))
        or (_ZH_PAST.search(text) and _ZH_RECOVERED.search(text))
    )


def _own_signal(text: str) -> tuple[str | None, bool]:
    """The deciding pattern's name (strong or soft) in ``text``, and whether ``text`` has a context cue."""
    found = _matches(text, ZH_PATTERNS, True) if _CJK.search(text) else []
    found += _matches(text, EN_PATTERNS, False)
    over = _over(text)
    laughing = _LAUGH.search(text) is not None
    context_cue = False
    for pattern, _match in found:
        if pattern.kind is Kind.CONTEXT:
            context_cue = context_cue or _SAFE_NOW.search(text) is None
            continue
        if over:
            continue
        if pattern.kind is Kind.SOFT and laughing:
            continue
        return pattern.name, context_cue
    return None, context_cue


def assess(text: str, recent: Sequence[str] = ()) -> Assessment:
    """Whether ``text`` is a crisis message; ``recent`` are the user's earlier messages in the chat
    (oldest first, the last few are used), which decide messages that are ambiguous alone."""
    normalized = normalize(text)
    if not normalized:
        return Assessment(False)
    reason, context_cue = _own_signal(normalized)
    if reason is not None:
        return Assessment(True, reason)
    if context_cue and any(_own_signal(normalize(earlier))[0] for earlier in list(recent)[-3:]):
        return Assessment(True, "context")
    return Assessment(False)


def is_crisis(text: str, recent: Sequence[str] = ()) -> bool:
    """Shorthand for ``assess(text, recent).crisis``."""
    return assess(text, recent).crisis
