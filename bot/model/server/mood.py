"""Mood reads on a server: the local model's history-free prompt, scored from the label tokens.

The prompt is :func:`bot.model.mood_prompt.mood_messages` for the cleaned message, with the examples
and answer words of the message's language, exactly as the local model builds it; the server applies
the model's own chat template. Scoring, in the order the server allows (detected once, see
:class:`MoodMode`):

* ``logprobs``: one generated token with ``top_logprobs``; each label's probability is the summed
  probability of the listed tokens that begin one of its answer words' spellings
  (:func:`~bot.model.mood_prompt.label_variants`, compared as UTF-8 bytes, a token that begins two
  labels' words counting for neither), renormalised over the three labels as the local model does. A
  label with no listed token gets the smallest listed probability (an upper bound of its own).
* ``json_schema`` / ``guided_choice`` / ``grammar``: a constrained answer that can only be one of the
  three words; it carries no probabilities, so the chosen label gets 1.
* ``plain``: the server can neither: the first word of a short answer, neutral when it is no label.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bot.model.mood_prompt import (
    FEW_SHOT,
    LABELS,
    Message,
    clean_message,
    label_variants,
    label_words_for,
    mood_messages,
    prompt_language,
)
from bot.types import Mood, MoodLabel

Json = dict[str, Any]

#: Top tokens asked for (20 is the OpenAI API's limit and vLLM's default maximum).
TOP_LOGPROBS = 20


class MoodMode(enum.StrEnum):
    """How a server's mood reads are scored."""

    LOGPROBS = "logprobs"
    JSON_SCHEMA = "json_schema"
    GUIDED_CHOICE = "guided_choice"
    GRAMMAR = "grammar"
    PLAIN = "plain"


#: Constrained modes, in the order they are tried when a server gives no log-probabilities.
CONSTRAINED_MODES = (MoodMode.JSON_SCHEMA, MoodMode.GUIDED_CHOICE, MoodMode.GRAMMAR)


def mood_prompt(text: str, *, max_chars: int = 4000) -> tuple[list[Message], Mapping[MoodLabel, str]]:
    """The chat messages of the mood read of ``text`` and the answer words they use."""
    language = prompt_language(text)
    if language not in FEW_SHOT:
        language = next(iter(FEW_SHOT))
    words = label_words_for(language)
    messages = mood_messages(
        clean_message(text, max_chars=max_chars), examples=FEW_SHOT[language], label_words=words
    )
    return messages, words


def logprobs_request(model: str | None, messages: Sequence[Message]) -> Json:
    """A chat completion of one token with the top log-probabilities of that token."""
    body: Json = {
        "messages": list(messages),
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
        "stream": False,
    }
    if model:
        body["model"] = model
    return body


def constrained_request(
    model: str | None, messages: Sequence[Message], mode: MoodMode, choices: Sequence[str]
) -> Json:
    """A chat completion whose answer the server constrains to one of ``choices``."""
    body: Json = {"messages": list(messages), "max_tokens": 16, "temperature": 0.0, "stream": False}
    if model:
        body["model"] = model
    if mode is MoodMode.JSON_SCHEMA:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "mood", "schema": {"type": "string", "enum": list(choices)}},
        }
    elif mode is MoodMode.GUIDED_CHOICE:
        body["guided_choice"] = list(choices)
    elif mode is MoodMode.GRAMMAR:
        body["grammar"] = "root ::= " + " | ".join(json.dumps(choice) for choice in choices)
    else:
        body["max_tokens"] = 4
    return body


def answer_text(response: Json) -> str | None:
    """The message content of a chat completion's first choice."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def constrained_answer(response: Json, mode: MoodMode, choices: Sequence[str]) -> str | None:
    """Which of ``choices`` a constrained completion answered (None when it answered none)."""
    content = answer_text(response)
    if content is None:
        return None
    content = content.strip()
    if mode is MoodMode.JSON_SCHEMA:
        try:
            content = json.loads(content)
        except ValueError:
            return None
        if not isinstance(content, str):
            return None
    return content if content in choices else None


def first_top_logprobs(response: Json) -> list[Json] | None:
    """The ``top_logprobs`` list of the first generated token, or None when the server sent none."""
    try:
        content = response["choices"][0]["logprobs"]["content"]
        top = content[0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(top, list) or not top:
        return None
    return [entry for entry in top if isinstance(entry, dict)]


def _token_bytes(entry: Json) -> bytes | None:
    raw = entry.get("bytes")
    if isinstance(raw, list) and raw and all(isinstance(value, int) and 0 <= value < 256 for value in raw):
        return bytes(raw)
    token = entry.get("token")
    if isinstance(token, str):
        return token.encode("utf-8", "replace")
    return None


def label_of_token(token: bytes, words: Mapping[MoodLabel, str]) -> MoodLabel | None:
    """The label whose answer word ``token`` begins (None for no label, or for two)."""
    if not token.strip():
        return None
    owners = {
        label
        for label in LABELS
        for spelling in label_variants(words[label])
        if spelling.encode("utf-8").startswith(token)
    }
    return owners.pop() if len(owners) == 1 else None


def mood_from_top_logprobs(top: Sequence[Json], words: Mapping[MoodLabel, str]) -> Mood | None:
    """The mood from one token's top log-probabilities; None when no listed token begins a label."""
    per_label: dict[MoodLabel, list[float]] = {label: [] for label in LABELS}
    listed: list[float] = []
    for entry in top:
        logprob = entry.get("logprob")
        token = _token_bytes(entry)
        if not isinstance(logprob, (int, float)) or token is None or not math.isfinite(logprob):
            continue
        listed.append(float(logprob))
        label = label_of_token(token, words)
        if label is not None:
            per_label[label].append(float(logprob))
    if not any(per_label.values()):
        return None
    floor = min(listed)
    scores = [_logsumexp(per_label[label]) if per_label[label] else floor for label in LABELS]
    total = _logsumexp(scores)
    probabilities = {label: math.exp(score - total) for label, score in zip(LABELS, scores, strict=True)}
    return Mood.from_probabilities(probabilities)


def mood_from_word(word: str | None, words: Mapping[MoodLabel, str]) -> Mood:
    """The mood a one-word answer names: that label with probability 1, else neutral."""
    if word:
        cleaned = word.strip().strip("\"'.,!。！").strip()
        for label in LABELS:
            if cleaned.lower() == words[label].lower():
                return one_hot(label)
        token = cleaned.split()[0].encode("utf-8") if cleaned.split() else b""
        named = label_of_token(token, words) if token else None
        if named is not None:
            return one_hot(named)
    return Mood.from_probabilities(
        {MoodLabel.NEUTRAL: 0.34, MoodLabel.POSITIVE: 0.33, MoodLabel.NEGATIVE: 0.33}
    )


def one_hot(label: MoodLabel) -> Mood:
    """A mood that is ``label`` with probability 1."""
    return Mood.from_probabilities({other: 1.0 if other is label else 0.0 for other in LABELS})


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))
