"""``LanguageModel`` on transformers + torch, tuned for a small CPU.

* Mood reads are one forward pass per message over a shared, precomputed KV cache of the constant
  prompt prefix of the message's language (see :mod:`bot.model.mood_prompt`); only the rows of the
  output head for the label words are computed; the three label probabilities are
  renormalised (optionally calibrated against content-free inputs, off by default: it measured worse
  on the dev sets with this prompt).
* Replies are sampled token by token with last-position logits only, streaming text out, reusing the
  KV cache of the conversation's unchanged prefix between turns.
* With ``quantize`` the linear layers (including the output head) run with int8 weights and per-token
  int8 activations, and the token embedding becomes int8 rows (see :mod:`bot.model.cpu_weights`),
  which keeps RSS near a third of float32.
* Attention runs on the key/value heads without per-head copies (see :mod:`bot.model.cpu_attention`).
* Mood reads and reply steps of Llama/Qwen2-style decoders skip transformers' forward-pass machinery
  (see :mod:`bot.model.lean_pass`).
* The few-shot prefixes' key/values can be kept on disk between runs (see :mod:`bot.model.prefix_store`).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bot.errors import ModelError, ModelNotFoundError
from bot.model.base import ChatTurn, StopCheck, TextCallback
from bot.model.cpu_attention import use_grouped_attention
from bot.model.cpu_weights import prepare_for_cpu, release_free_memory
from bot.model.lean_pass import LeanPass
from bot.model.loader import transformers_version
from bot.model.mood_prompt import (
    FEW_SHOT,
    LABELS,
    clean_message,
    label_variants,
    label_words_for,
    prompt_language,
    split_mood_prompt,
)
from bot.model.prefix_store import PrefixStore, weights_identity
from bot.prompts import language_hint
from bot.types import Mood, MoodLabel

logger = logging.getLogger(__name__)

#: Inputs whose label distribution is the model's bias (contextual calibration).
CONTENT_FREE_INPUTS: tuple[str, ...] = ("", "N/A", "…")

#: At load the lean pass runs this message's mood-read tokens after the first prefix, as transformers'
#: pass does, and is used where the next-token logits differ by at most ``LEAN_PASS_TOLERANCE`` of the
#: largest. The two run the same arithmetic (equal bit for bit on the bundled model); the margin covers
#: attention implementations other than grouped attention (e.g. SDPA) summing in another order.
LEAN_PASS_CHECK_INPUT = "N/A"
LEAN_PASS_TOLERANCE = 1e-4


@dataclass(slots=True)
class SamplingConfig:
    """How replies are sampled; the defaults suit a warm, varied companion."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.1
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class _MoodPrefix:
    """One language's mood prompt as tokens before and after the message, with the prefix's key/values.

    ``label_groups`` holds, per label, the rows of the model's label head that spell its answer word.
    """

    prefix_ids: list[int]
    suffix_ids: list[int]
    key_values: list[tuple[torch.Tensor, torch.Tensor]]
    label_groups: list[list[int]]


@dataclass(slots=True)
class _ConversationCache:
    token_ids: list[int]
    key_values: list[tuple[torch.Tensor, torch.Tensor]]
    last_used: float = field(default_factory=time.monotonic)


class TransformersModel:
    """A causal language model from a Hugging Face directory, implementing ``LanguageModel``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,  # type: ignore[no-untyped-def]
        *,
        name: str,
        label_head: torch.Tensor,
        label_bias: torch.Tensor | None,
        label_token_groups: Mapping[str, list[list[int]]],
        mood_token_budget: int = 256,
        max_input_chars: int = 4000,
        max_prompt_tokens: int = 3072,
        mood_batch_size: int = 16,
        calibrate: bool = False,
        sampling: SamplingConfig | None = None,
        conversation_slots: int = 3,
        mood_instruction: str | None = None,
        mood_examples: Mapping[str, Sequence[tuple[str, MoodLabel]]] | None = None,
        mood_user_format: str | None = None,
        prefix_store: PrefixStore | None = None,
        weights: str = "as loaded",
    ) -> None:
        """Wrap a loaded model; computes each prompt language's prefix KV cache once, here.

        ``mood_examples`` maps prompt languages (see ``prompt_language``) to their few-shot examples;
        a language without its own examples is read with the first language's. ``label_token_groups``
        maps prompt languages to, per label, the rows of ``label_head`` that spell that language's
        answer word (see ``label_words_for``; English's serve a language missing there).
        ``prefix_store`` keeps those prefix caches on disk between runs. ``weights`` says what the linear
        layers run as (e.g. "float32" or an int8 kind, see ``prepare_for_cpu``).
        """
        self.name = name
        self._model = model
        self._tokenizer = tokenizer
        self._decoder = model.get_decoder()
        self._output_head = model.get_output_embeddings()
        self._decoder_cache_keyword = cache_keyword(self._decoder)
        self._model_cache_keyword = cache_keyword(model)
        self._label_head = label_head  # [n_variant_tokens, hidden] float32
        self._label_bias = label_bias
        self.mood_token_budget = mood_token_budget
        self.max_input_chars = max_input_chars
        self.max_prompt_tokens = max_prompt_tokens
        self.mood_batch_size = mood_batch_size
        self.sampling = sampling or SamplingConfig()
        self._conversation_slots = conversation_slots
        self._conversations: list[_ConversationCache] = []
        self._lock = threading.RLock()
        self._generator = torch.Generator()
        if self.sampling.seed is not None:
            self._generator.manual_seed(self.sampling.seed)
        else:
            self._generator.seed()
        self._stop_ids = self._find_stop_ids()
        self._prefix_store = prefix_store
        self.weights = weights
        prompt_options: dict[str, object] = {}
        if mood_instruction is not None:
            prompt_options["instruction"] = mood_instruction
        if mood_user_format is not None:
            prompt_options["user_format"] = mood_user_format
        examples_by_language = FEW_SHOT if mood_examples is None else mood_examples
        if not examples_by_language:
            raise ValueError("mood_examples names no prompt language")
        self._mood_prefixes: dict[str, _MoodPrefix] = {
            language: self._build_mood_prefix(language, examples, prompt_options, label_token_groups)
            for language, examples in examples_by_language.items()
        }
        self._lean_pass = self._checked_lean_pass()
        self._calibration = {language: torch.zeros(len(LABELS)) for language in self._mood_prefixes}
        if calibrate:
            self._calibration = {
                language: self._content_free_log_probs(prefix)
                for language, prefix in self._mood_prefixes.items()
            }
        release_free_memory()  # the prefix passes' scratch memory (~100 MB of RSS otherwise)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        location: Path | str,
        *,
        name: str,
        quantize: bool = True,
        threads: int = 0,
        max_input_chars: int = 4000,
        calibrate: bool = False,
        sampling: SamplingConfig | None = None,
        prefix_cache_dir: Path | None = None,
    ) -> TransformersModel:
        """Load a model directory (config.json, safetensors, tokenizer) or hub id for fast CPU inference.

        With ``prefix_cache_dir`` the few-shot prefixes' key/values are kept there between runs.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads or os.cpu_count() or 1)
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(location))
            drop_build_copies(tokenizer)
            model = AutoModelForCausalLM.from_pretrained(str(location), dtype="auto")
        except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
            where = (
                f"the directory {location}" if isinstance(location, Path) else f"Hugging Face ({location})"
            )
            raise ModelNotFoundError(
                f"Could not load a model from {where} ({type(error).__name__}): set MOODMATE_MODEL to a "
                "local directory with config.json, weights and a tokenizer, or to qwen2.5-coder-0.5b."
            ) from error
        model.eval()
        tokens_by_language = {
            language: _label_token_groups(tokenizer, label_words_for(language)) for language in FEW_SHOT
        }
        flat = list(
            dict.fromkeys(
                token for groups in tokens_by_language.values() for group in groups for token in group
            )
        )
        head = model.get_output_embeddings()
        label_head = head.weight.detach()[flat].float().clone()
        bias = getattr(head, "bias", None)
        label_bias = bias.detach()[flat].float().clone() if bias is not None else None
        row_of = {token: row for row, token in enumerate(flat)}
        groups = {
            language: [[row_of[token] for token in group] for group in token_groups]
            for language, token_groups in tokens_by_language.items()
        }
        weights = prepare_for_cpu(model, quantize=quantize)
        grouped = use_grouped_attention(model)
        logger.info(
            "Loaded %s in %.1f s (weights %s, grouped attention=%s)",
            name,
            time.perf_counter() - started,
            weights,
            grouped,
        )
        store = None
        identity = weights_identity(location, getattr(model.config, "_commit_hash", None))
        if prefix_cache_dir is not None and identity is not None:
            versions = f"torch {torch.__version__}, transformers {transformers_version()}"
            store = PrefixStore(prefix_cache_dir, f"{identity}|{weights}|grouped={grouped}|{versions}")
        try:
            instance = cls(
                model,
                tokenizer,
                name=name,
                label_head=label_head,
                label_bias=label_bias,
                label_token_groups=groups,
                max_input_chars=max_input_chars,
                calibrate=calibrate,
                sampling=sampling,
                prefix_store=store,
                weights=weights,
            )
        except ValueError as error:  # e.g. a tokenizer without a chat template
            raise ModelNotFoundError(
                f"The model {name} cannot be used as a chat model ({error}): set MOODMATE_MODEL to an "
                "instruction-tuned model with a chat template."
            ) from error
        logger.info("Model %s ready in %.1f s", name, time.perf_counter() - started)
        return instance

    # ------------------------------------------------------------------ helpers

    def _render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        rendered = self._tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _find_stop_ids(self) -> set[int]:
        tokenizer = self._tokenizer
        stops: set[int] = set()
        for token in ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "<|eot_id|>", "</s>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
                stops.add(token_id)
        if tokenizer.eos_token_id is not None:
            stops.add(int(tokenizer.eos_token_id))
        config_eos = getattr(getattr(self._model, "generation_config", None), "eos_token_id", None)
        if isinstance(config_eos, int):
            stops.add(config_eos)
        elif isinstance(config_eos, list):
            stops.update(int(token) for token in config_eos)
        return stops

    def _new_cache(self):  # type: ignore[no-untyped-def]
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def _seeded_cache(
        self,
        key_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        batch: int = 1,
        length: int | None = None,
    ):  # type: ignore[no-untyped-def]
        """A fresh cache holding (a batch-expanded view of) stored key/values; originals stay unchanged."""
        cache = self._new_cache()
        for layer_index, (keys, values) in enumerate(key_values):
            if length is not None:
                keys, values = keys[..., :length, :], values[..., :length, :]
            if batch != keys.shape[0]:
                keys = keys.expand(batch, -1, -1, -1)
                values = values.expand(batch, -1, -1, -1)
            cache.update(keys, values, layer_index)
        return cache

    def _run_decoder(self, input_ids: torch.Tensor, cache):  # type: ignore[no-untyped-def]
        """The decoder's outputs for ``input_ids`` after (and appended to) ``cache``."""
        return self._decoder(input_ids=input_ids, use_cache=True, **{self._decoder_cache_keyword: cache})

    @staticmethod
    def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.inference_mode()
    def _compute_prefix_kv(self, prefix_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._prefix_store is not None and (stored := self._prefix_store.load(prefix_ids)) is not None:
            return stored
        cache = self._new_cache()
        self._run_decoder(torch.tensor([prefix_ids]), cache)
        key_values = self._cache_tensors(cache)
        if self._prefix_store is not None:
            self._prefix_store.save(prefix_ids, key_values)
        return key_values

    def _build_mood_prefix(
        self,
        language: str,
        examples: Sequence[tuple[str, MoodLabel]],
        prompt_options: Mapping[str, object],
        label_token_groups: Mapping[str, list[list[int]]],
    ) -> _MoodPrefix:
        if language not in label_token_groups:
            language = "en"
        parts = split_mood_prompt(
            self._render_chat,
            examples=tuple(examples),
            label_words=label_words_for(language),
            **prompt_options,  # type: ignore[arg-type]
        )
        prefix_ids = self._encode(parts.prefix)
        return _MoodPrefix(
            prefix_ids,
            self._encode(parts.suffix),
            self._compute_prefix_kv(prefix_ids),
            label_groups=label_token_groups[language],
        )

    @torch.inference_mode()
    def _checked_lean_pass(self) -> LeanPass | None:
        """The lean pass where the decoder has one and it computes as transformers' pass does."""
        lean = LeanPass.for_decoder(self._decoder)
        if lean is None:
            return None
        prefix = next(iter(self._mood_prefixes.values()))
        tokens = torch.tensor([self._mood_token_ids(LEAN_PASS_CHECK_INPUT, prefix)])
        expected = self._next_logits(tokens, self._seeded_cache(prefix.key_values), None)
        try:
            found = self._next_logits(tokens, self._seeded_cache(prefix.key_values), lean)
        except (RuntimeError, ValueError, IndexError, TypeError, AttributeError):
            logger.warning("Keeping transformers' forward pass: the lean pass failed", exc_info=True)
            return None
        difference = ((found - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
        if difference > LEAN_PASS_TOLERANCE:
            logger.warning("Keeping transformers' forward pass: the lean pass differs by %.2g", difference)
            return None
        return lean

    # ------------------------------------------------------------------ mood

    def _mood_language(self, text: str) -> str:
        language = prompt_language(text)
        return language if language in self._mood_prefixes else next(iter(self._mood_prefixes))

    def _mood_token_ids(self, text: str, prefix: _MoodPrefix) -> list[int]:
        cleaned = clean_message(text, max_chars=self.max_input_chars)
        ids = self._encode(cleaned)
        if len(ids) > self.mood_token_budget:
            head = self.mood_token_budget * 3 // 4
            ids = ids[:head] + ids[-(self.mood_token_budget - head) :]
        return ids + prefix.suffix_ids

    @torch.inference_mode()
    def _label_log_probs(self, sequences: list[list[int]], prefix: _MoodPrefix) -> torch.Tensor:
        """Log-probabilities over the three labels (uncalibrated) for token sequences after ``prefix``."""
        lengths = [len(sequence) for sequence in sequences]
        width = max(lengths)
        pad = self._tokenizer.pad_token_id
        pad = prefix.suffix_ids[-1] if pad is None else pad
        # Right padding needs no attention mask: real tokens never attend to pads after them.
        batch = torch.tensor([sequence + [pad] * (width - len(sequence)) for sequence in sequences])
        if self._lean_pass is not None:
            last = self._lean_pass.last_hidden_states(batch, lengths, prefix.key_values)
        else:
            cache = self._seeded_cache(prefix.key_values, batch=len(sequences))
            hidden = self._run_decoder(batch, cache).last_hidden_state
            last = hidden[torch.arange(len(sequences)), torch.tensor(lengths) - 1]
        logits = last.float() @ self._label_head.T
        if self._label_bias is not None:
            logits = logits + self._label_bias
        token_log_probs = torch.log_softmax(logits, dim=-1)
        per_label = torch.stack(
            [torch.logsumexp(token_log_probs[:, group], dim=-1) for group in prefix.label_groups], dim=-1
        )
        return torch.log_softmax(per_label, dim=-1)

    def _content_free_log_probs(self, prefix: _MoodPrefix) -> torch.Tensor:
        sequences = [self._mood_token_ids(text, prefix) for text in CONTENT_FREE_INPUTS]
        probabilities = self._label_log_probs(sequences, prefix).exp().mean(dim=0).clamp_min(1e-4)
        return probabilities.log()

    def mood_log_probs(self, texts: Sequence[str], *, calibrated: bool = True) -> torch.Tensor:
        """Label log-probabilities [len(texts), 3] in ``LABELS`` order (for benchmarks and tests).

        Texts are grouped by prompt language, and each group runs in length-sorted padded batches.
        """
        languages = [self._mood_language(text) for text in texts]
        result = torch.zeros(len(texts), len(LABELS))
        with self._lock:
            for language, prefix in self._mood_prefixes.items():
                indices = [index for index, other in enumerate(languages) if other == language]
                sequences = {index: self._mood_token_ids(texts[index], prefix) for index in indices}
                order = sorted(indices, key=lambda index: len(sequences[index]))
                for start in range(0, len(order), self.mood_batch_size):
                    chunk = order[start : start + self.mood_batch_size]
                    log_probs = self._label_log_probs([sequences[index] for index in chunk], prefix)
                    if calibrated:
                        log_probs = torch.log_softmax(log_probs - self._calibration[language], dim=-1)
                    result[chunk] = log_probs
        return result

    def classify(self, texts: Sequence[str]) -> list[Mood]:
        """Read the mood of each text on its own; one padded batch per ``mood_batch_size`` texts."""
        if not texts:
            return []
        try:
            probabilities = self.mood_log_probs(texts).exp()
        except (RuntimeError, ValueError, IndexError) as error:
            raise ModelError(f"mood read failed: {type(error).__name__}") from error
        moods = []
        for row in probabilities.tolist():
            moods.append(Mood.from_probabilities(dict(zip(LABELS, row, strict=True))))
        return moods

    # ------------------------------------------------------------------ replies

    def _reply_prompt_ids(self, system: str, history: Sequence[ChatTurn]) -> list[int]:
        turns = [
            ChatTurn(turn.role, clean_message(turn.content, max_chars=self.max_input_chars * 4))
            for turn in history
        ]
        system_clean = clean_message(system, max_chars=self.max_input_chars * 4)
        hint = language_hint(turns)
        if hint:
            system_clean = f"{system_clean}\n{hint}" if system_clean else hint
        while True:
            messages = [{"role": "system", "content": system_clean}]
            messages += [{"role": turn.role, "content": turn.content} for turn in turns]
            ids = self._encode(self._render_chat(messages))
            if len(ids) <= self.max_prompt_tokens or len(turns) <= 1:
                break
            turns = turns[1:]
            while len(turns) > 1 and turns[0].role != "user":
                turns = turns[1:]
        if len(ids) > self.max_prompt_tokens:  # one enormous turn: keep the start and the end
            keep = self.max_prompt_tokens
            ids = ids[: keep // 2] + ids[-(keep - keep // 2) :]
        return ids

    def _reuse_conversation(self, ids: list[int]):  # type: ignore[no-untyped-def]
        best: _ConversationCache | None = None
        best_length = 0
        for entry in self._conversations:
            common = _common_prefix(entry.token_ids, ids)
            if common > best_length:
                best, best_length = entry, common
        best_length = min(best_length, len(ids) - 1)
        if best is None or best_length < 8:
            return self._new_cache(), 0
        best.last_used = time.monotonic()
        return self._seeded_cache(best.key_values, length=best_length), best_length

    def _remember_conversation(self, token_ids: list[int], cache) -> None:  # type: ignore[no-untyped-def]
        self._conversations = [
            entry
            for entry in self._conversations
            if _common_prefix(entry.token_ids, token_ids) < len(entry.token_ids)
        ]
        self._conversations.append(_ConversationCache(token_ids, self._cache_tensors(cache)))
        self._conversations.sort(key=lambda entry: entry.last_used, reverse=True)
        del self._conversations[self._conversation_slots :]

    def _next_logits(self, input_ids: torch.Tensor, cache, lean: LeanPass | None) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """Logits ``[vocab]`` for the token after ``input_ids [1, n]``, whose keys/values join ``cache``.

        Computed by ``lean`` where given, else by transformers' forward pass.
        """
        if lean is not None:
            return self._output_head(lean.extend(input_ids, cache))[0, -1]
        return self._model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._model_cache_keyword: cache}
        ).logits[0, -1]

    def _next_token(self, logits: torch.Tensor, generated: list[int], *, allow_stop: bool) -> int:
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
        with self._lock:
            try:
                return self._generate(system, history, max_new_tokens, on_text, should_stop)
            except (RuntimeError, ValueError, IndexError) as error:
                raise ModelError(f"reply generation failed: {type(error).__name__}") from error

    @torch.inference_mode()
    def _generate(
        self,
        system: str,
        history: Sequence[ChatTurn],
        max_new_tokens: int,
        on_text: TextCallback | None,
        should_stop: StopCheck | None,
    ) -> str:
        ids = self._reply_prompt_ids(system, history)
        cache, reused = self._reuse_conversation(ids)
        fed = list(ids)
        step_input = torch.tensor([ids[reused:]])
        generated: list[int] = []
        emitted = ""
        started = time.perf_counter()
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                break
            logits = self._next_logits(step_input, cache, self._lean_pass)
            token = self._next_token(logits, generated, allow_stop=bool(generated))
            if token in self._stop_ids:
                break
            generated.append(token)
            text = self._tokenizer.decode(generated, skip_special_tokens=True)
            if on_text is not None and not text.endswith("\ufffd"):  # else: a character is still incomplete
                text = text.replace("\ufffd", "")
                if len(text) > len(emitted) and text.startswith(emitted):
                    on_text(text[len(emitted) :])
                    emitted = text
            step_input = torch.tensor([[token]])
            fed.append(token)
        fed = fed[: cache.get_seq_length()]
        self._remember_conversation(fed, cache)
        text = self._tokenizer.decode(generated, skip_special_tokens=True).replace("\ufffd", "")
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

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` under this model's tokenizer."""
        return len(self._encode(text))


#: Tokenizer classes that keep Python copies of their vocabulary and merges (``_vocab``, ``_merges``)
#: after building their Rust tokenizer from them and never read them again (transformers 5.24).
TOKENIZERS_WITH_BUILD_COPIES = ("Qwen2Tokenizer",)


def drop_build_copies(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Free those copies (66 MB of RSS for the bundled Qwen2.5 tokenizer); the Rust tokenizer runs alone."""
    if type(tokenizer).__name__ not in TOKENIZERS_WITH_BUILD_COPIES:
        return
    for name in ("_vocab", "_merges"):
        if isinstance(getattr(tokenizer, name, None), (dict, list)):
            setattr(tokenizer, name, None)


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = min(len(first), len(second))
    for index in range(length):
        if first[index] != second[index]:
            return index
    return length


def cache_keyword(module: nn.Module) -> str:
    """The ``forward`` keyword of ``module`` that takes a KV cache.

    ``cache`` where the installed transformers names it so (5.24 warns that ``past_key_values`` goes
    away in 5.40), ``past_key_values`` on older releases.
    """
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _label_token_groups(tokenizer, words: Mapping[MoodLabel, str]) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """Per label, the distinct first tokens of its word's spellings; no token may count for two labels."""
    groups: list[list[int]] = []
    owner: dict[int, MoodLabel] = {}
    for label in LABELS:
        group: list[int] = []
        for spelling in label_variants(words[label]):
            ids = tokenizer.encode(spelling, add_special_tokens=False)
            if not ids:
                continue
            token = int(ids[0])
            if token in owner and owner[token] != label:
                continue  # an ambiguous first token (e.g. a bare space) says nothing about the label
            owner[token] = label
            if token not in group:
                group.append(token)
        if not group:
            raise ModelError(f"the tokenizer cannot spell the label {words[label]!r}")
        groups.append(group)
    shared = {token for token in owner if sum(token in group for group in groups) > 1}
    return [[token for token in group if token not in shared] or group for group in groups]
