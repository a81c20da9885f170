"""A deterministic stand-in for the language model, for tests, demos and load tests.

It implements :class:`bot.model.base.LanguageModel` with keyword rules, records every input it
was given (so tests can prove what reached the model), and can be told to be slow or to fail.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence

from bot.errors import ModelError
from bot.model.base import ChatTurn, StopCheck, TextCallback
from bot.types import Mood, MoodLabel

_POSITIVE = re.compile(
    r"\b(love|great|happy|glad|good|wonderful|awesome|thanks|yay)\b|开心|喜欢|好吃|棒|高兴", re.I
)
_NEGATIVE = re.compile(
    r"\b(sad|angry|tired|hate|awful|bad|terrible|exhausting|exhausted|upset)\b|难过|讨厌|生气|累|差", re.I
)

ReplyFunction = Callable[[str, Sequence[ChatTurn]], str]


class FakeModel:
    """Keyword moods and templated replies; thread-safe; records calls.

    ``mood_delay`` and ``reply_delay`` (seconds) make it take realistic time; ``token_delay``
    paces streaming. ``fail_on`` makes any call whose input contains that text raise ``ModelError``.
    ``reply_fn`` replaces the templated reply (e.g. to return a 10,000-character text).
    """

    name = "fake"

    def __init__(
        self,
        *,
        mood_delay: float = 0.0,
        reply_delay: float = 0.0,
        token_delay: float = 0.0,
        fail_on: str | None = None,
        reply_fn: ReplyFunction | None = None,
    ) -> None:
        self.mood_delay = mood_delay
        self.reply_delay = reply_delay
        self.token_delay = token_delay
        self.fail_on = fail_on
        self.reply_fn = reply_fn
        self.classify_inputs: list[str] = []
        self.classify_batches: list[list[str]] = []
        self.generate_inputs: list[tuple[str, tuple[ChatTurn, ...]]] = []
        self.call_threads: set[int] = set()
        self._lock = threading.Lock()

    def _record_thread(self) -> None:
        with self._lock:
            self.call_threads.add(threading.get_ident())

    def classify(self, texts: Sequence[str]) -> list[Mood]:
        self._record_thread()
        with self._lock:
            self.classify_batches.append(list(texts))
            self.classify_inputs.extend(texts)
        if self.fail_on is not None and any(self.fail_on in text for text in texts):
            raise ModelError("fake model failure (classify)")
        if self.mood_delay:
            time.sleep(self.mood_delay)
        return [self._mood(text) for text in texts]

    @staticmethod
    def _mood(text: str) -> Mood:
        positive = len(_POSITIVE.findall(text))
        negative = len(_NEGATIVE.findall(text))
        if positive > negative:
            probabilities = {MoodLabel.POSITIVE: 0.9, MoodLabel.NEUTRAL: 0.07, MoodLabel.NEGATIVE: 0.03}
        elif negative > positive:
            probabilities = {MoodLabel.POSITIVE: 0.03, MoodLabel.NEUTRAL: 0.06, MoodLabel.NEGATIVE: 0.91}
        else:
            probabilities = {MoodLabel.POSITIVE: 0.1, MoodLabel.NEUTRAL: 0.8, MoodLabel.NEGATIVE: 0.1}
        return Mood.from_probabilities(probabilities)

    def generate(
        self,
        system: str,
        history: Sequence[ChatTurn],
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> str:
        self._record_thread()
        with self._lock:
            self.generate_inputs.append((system, tuple(history)))
        last = history[-1].content if history else ""
        if self.fail_on is not None and self.fail_on in last:
            raise ModelError("fake model failure (generate)")
        if self.reply_delay:
            time.sleep(self.reply_delay)
        if self.reply_fn is not None:
            reply = self.reply_fn(system, history)
        elif re.search(r"[\u4e00-\u9fff]", last):
            reply = f"我听到了：{last[:40]}。能多说说吗？"
        else:
            reply = f"I hear you: {last[:60]}. Tell me more?"
        if on_text is not None or self.token_delay:
            words = reply.split(" ")
            for index, word in enumerate(words):
                if should_stop is not None and should_stop():
                    break
                if self.token_delay:
                    time.sleep(self.token_delay)
                if on_text is not None:
                    on_text(word if index == 0 else " " + word)
        return reply

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)
