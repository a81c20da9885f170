"""Replies on a :class:`~bot.model.decoder.Decoder`: the prompt, sampling and the conversation cache.

Replies are sampled token by token with last-position logits only, streaming text out, reusing the KV
cache of the conversation's unchanged prefix between turns (a few conversations are kept).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bot.errors import ModelError
from bot.model.base import ChatTurn, StopCheck, TextCallback
from bot.model.decoder import Decoder, KeyValues
from bot.model.mood_prompt import clean_message

logger = logging.getLogger(__name__)

#: Special tokens that end a reply wherever the tokenizer knows them.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "<|eot_id|>", "</s>")

#: The shortest shared start (in tokens) worth reusing a kept conversation's cache for.
MIN_REUSED_TOKENS = 8


@dataclass(slots=True)
class SamplingConfig:
    """How replies are sampled; the defaults suit a warm, varied companion."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.1
    seed: int | None = None


@dataclass(slots=True)
class _ConversationCache:
    token_ids: list[int]
    key_values: KeyValues
    last_used: float = field(default_factory=time.monotonic)


def find_stop_ids(decoder: Decoder) -> frozenset[int]:
    """The token ids that end a reply: the stop tokens the tokenizer knows, and the model's EOS ids."""
    tokenizer = decoder.tokenizer
    stops: set[int] = set()
    for token in STOP_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
            stops.add(token_id)
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(decoder.model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        stops.add(config_eos)
    elif isinstance(config_eos, list):
        stops.update(int(token) for token in config_eos)
    return frozenset(stops)


class ReplyGenerator:
    """Writes the assistant's next turn of a conversation, token by token."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        max_input_chars: int = 4000,
        max_prompt_tokens: int = 3072,
        sampling: SamplingConfig | None = None,
        conversation_slots: int = 3,
        lock: threading.RLock | None = None,
    ) -> None:
        """Generate with ``decoder``; ``lock`` is shared with whatever else runs it."""
        self.decoder = decoder
        self.max_input_chars = max_input_chars
        self.max_prompt_tokens = max_prompt_tokens
        self.sampling = sampling or SamplingConfig()
        self.lock = lock or threading.RLock()
        self._conversation_slots = conversation_slots
        self._conversations: list[_ConversationCache] = []
        self._generator = torch.Generator()
        self.seed(self.sampling.seed)
        self._stop_ids = find_stop_ids(decoder)

    @property
    def stop_ids(self) -> frozenset[int]:
        """The token ids that end a reply."""
        return self._stop_ids

    def seed(self, seed: int | None) -> None:
        """Restart the sampling draws from ``seed`` (None: from a fresh random seed)."""
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    @property
    def kept_conversations(self) -> int:
        """How many conversations' KV caches are kept for their next turn."""
        return len(self._conversations)

    def forget_conversations(self) -> None:
        """Drop the kept conversation caches (the next reply computes its whole prompt)."""
        with self.lock:
            self._conversations.clear()

    def prompt_ids(self, system: str, history: Sequence[ChatTurn]) -> list[int]:
        """The reply prompt's tokens: the cleaned ``system`` text, then the turns of ``history`` that fit
        in ``max_prompt_tokens`` (oldest dropped first, a user's turn first), then the assistant's cue."""
        turns = [
            ChatTurn(turn.role, clean_message(turn.content, max_chars=self.max_input_chars * 4))
            for turn in history
        ]
        system_clean = clean_message(system, max_chars=self.max_input_chars * 4)
        while True:
            messages = [{"role": "system", "content": system_clean}]
            messages += [{"role": turn.role, "content": turn.content} for turn in turns]
            ids = self.decoder.encode(self.decoder.render_chat(messages))
            if len(ids) <= self.max_prompt_tokens or len(turns) <= 1:
                break
            turns = turns[1:]
            while len(turns) > 1 and turns[0].role != "user":
                turns = turns[1:]
        if len(ids) > self.max_prompt_tokens:  # one enormous turn: keep the start and the end
            keep = self.max_prompt_tokens
            ids = ids[: keep // 2] + ids[-(keep - keep // 2) :]
        return ids

    def generate(
        self,
        system: str,
        history: Sequence[ChatTurn],
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> str:
        """Sample the assistant's next turn, streaming text through ``on_text``."""
        with self.lock:
            try:
                return self._generate(system, history, max_new_tokens, on_text, should_stop)
            except (RuntimeError, ValueError, IndexError) as error:
                raise ModelError(f"reply generation failed: {type(error).__name__}") from error

    def _reuse_conversation(self, ids: list[int]) -> tuple[Any, int]:
        best: _ConversationCache | None = None
        best_length = 0
        for entry in self._conversations:
            common = _common_prefix(entry.token_ids, ids)
            if common > best_length:
                best, best_length = entry, common
        best_length = min(best_length, len(ids) - 1)
        if best is None or best_length < MIN_REUSED_TOKENS:
            return self.decoder.new_cache(), 0
        best.last_used = time.monotonic()
        return self.decoder.seeded_cache(best.key_values, length=best_length), best_length

    def _remember_conversation(self, token_ids: list[int], cache: Any) -> None:
        self._conversations = [
            entry
            for entry in self._conversations
            if _common_prefix(entry.token_ids, token_ids) < len(entry.token_ids)
        ]
        self._conversations.append(_ConversationCache(token_ids, self.decoder.cache_tensors(cache)))
        self._conversations.sort(key=lambda entry: entry.last_used, reverse=True)
        del self._conversations[self._conversation_slots :]

    def next_token(self, logits: torch.Tensor, generated: list[int], *, allow_stop: bool) -> int:
        """Sample the next token from ``logits [vocab]`` after ``generated`` (stop tokens only if allowed)."""
        sampling = self.sampling
        logits = logits.float()
        if generated and sampling.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(generated[-256:])))
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty
            )
        if not allow_stop:
            logits[list(self._stop_ids)] = -math.inf
        if sampling.temperature <= 0:
            return int(torch.argmax(logits))
        top_k = min(sampling.top_k, logits.numel())
        top_values, top_indices = torch.topk(logits / sampling.temperature, k=top_k)
        probabilities = torch.softmax(top_values, dim=-1)
        cumulative = torch.cumsum(probabilities, dim=-1)
        keep = cumulative - probabilities < sampling.top_p
        keep[0] = True
        probabilities = torch.where(keep, probabilities, torch.zeros_like(probabilities))
        choice = torch.multinomial(probabilities / probabilities.sum(), 1, generator=self._generator)
        return int(top_indices[choice])

    @torch.inference_mode()
    def _generate(
        self,
        system: str,
        history: Sequence[ChatTurn],
        max_new_tokens: int,
        on_text: TextCallback | None,
        should_stop: StopCheck | None,
    ) -> str:
        decoder = self.decoder
        ids = self.prompt_ids(system, history)
        cache, reused = self._reuse_conversation(ids)
        fed = list(ids)
        step_input = torch.tensor([ids[reused:]])
        generated: list[int] = []
        emitted = ""
        started = time.perf_counter()
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                break
            logits = decoder.next_logits(step_input, cache, decoder.lean_pass)
            token = self.next_token(logits, generated, allow_stop=bool(generated))
            if token in self._stop_ids:
                break
            generated.append(token)
            text = decoder.decode(generated)
            if on_text is not None and not text.endswith("\ufffd"):  # else: a character is still incomplete
                text = text.replace("\ufffd", "")
                if len(text) > len(emitted) and text.startswith(emitted):
                    on_text(text[len(emitted) :])
                    emitted = text
            step_input = torch.tensor([[token]])
            fed.append(token)
        fed = fed[: cache.get_seq_length()]
        self._remember_conversation(fed, cache)
        text = decoder.decode(generated).replace("\ufffd", "")
        if on_text is not None and len(text) > len(emitted) and text.startswith(emitted):
            on_text(text[len(emitted) :])
        logger.debug(
            "Generated %d tokens (%d prompt, %d reused) in %.2f s",
            len(generated),
            len(ids),
            reused,
            time.perf_counter() - started,
        )
        return text.strip()


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = min(len(first), len(second))
    for index in range(length):
        if first[index] != second[index]:
            return index
    return length
