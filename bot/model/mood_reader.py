"""History-free mood reads on a :class:`~bot.model.decoder.Decoder`.

A read is one forward pass per message over a shared, precomputed KV cache of the constant prompt
prefix of the message's language (see :mod:`bot.model.mood_prompt`); only the rows of the output head
for the label words are computed (the *label head*, taken from the float weights at load), and the
three label probabilities are renormalised (optionally calibrated against content-free inputs, off by
default: it measured worse on the dev sets with this prompt).

:meth:`MoodReader.label_scores` gives a batch's label log-probabilities together with the outputs of
the layers a readout reads, averaged over the tokens read; :meth:`MoodReader.adjust` applies a
language's learned readout to them where it has one (see :mod:`bot.model.readout`; without one, plain
label scoring) and the calibration.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from bot.errors import ModelError
from bot.model.decoder import Decoder, KeyValues
from bot.model.mood_prompt import (
    FEW_SHOT,
    LABELS,
    clean_message,
    label_variants,
    label_words_for,
    prompt_language,
    split_mood_prompt,
)
from bot.model.readout import LanguageReadout, prompt_digest, row_products
from bot.types import Mood, MoodLabel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Inputs whose label distribution is the model's bias (contextual calibration).
CONTENT_FREE_INPUTS: tuple[str, ...] = ("", "N/A", "…")

#: The message the lean pass is checked with at load (see ``bot.model.decoder.check_lean_pass``).
LEAN_PASS_CHECK_INPUT = "N/A"


@dataclass(frozen=True, slots=True)
class LabelHead:
    """The output head's rows for the label words, with each language's rows per label.

    ``groups[language][i]`` holds the rows of ``weight`` that spell label ``LABELS[i]``'s answer word.
    """

    weight: torch.Tensor  # [n_label_tokens, hidden] float32
    bias: torch.Tensor | None
    groups: Mapping[str, list[list[int]]]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Label-token logits ``[n, n_label_tokens]`` of hidden states ``[n, hidden]``."""
        logits = row_products(hidden.float(), self.weight)
        return logits + self.bias if self.bias is not None else logits


@dataclass(frozen=True, slots=True)
class MoodPrefix:
    """One language's mood prompt as tokens before and after the message, with the prefix's key/values.

    ``label_groups`` holds, per label, the rows of the label head that spell its answer word.
    """

    prefix_ids: list[int]
    suffix_ids: list[int]
    key_values: KeyValues
    label_groups: list[list[int]]


class MoodScores(NamedTuple):
    """A batch's label log-probabilities ``[n, 3]`` (``LABELS`` order) and the outputs of the layers asked
    for, each averaged over a row's tokens after the prefix (``{layer: [n, hidden]}``)."""

    log_probs: torch.Tensor
    pooled: Mapping[int, torch.Tensor]


def build_label_head(
    model: PreTrainedModel, tokenizer: Any, languages: Sequence[str] = tuple(FEW_SHOT)
) -> LabelHead:
    """The label head of ``model`` for the answer words of ``languages``; call before int8 conversion."""
    tokens_by_language = {
        language: label_token_groups(tokenizer, label_words_for(language)) for language in languages
    }
    flat = list(
        dict.fromkeys(token for groups in tokens_by_language.values() for group in groups for token in group)
    )
    head = model.get_output_embeddings()
    weight = head.weight.detach()[flat].float().clone()
    bias = getattr(head, "bias", None)
    label_bias = bias.detach()[flat].float().clone() if bias is not None else None
    row_of = {token: row for row, token in enumerate(flat)}
    groups = {
        language: [[row_of[token] for token in group] for group in token_groups]
        for language, token_groups in tokens_by_language.items()
    }
    return LabelHead(weight, label_bias, groups)


def label_token_groups(tokenizer: Any, words: Mapping[MoodLabel, str]) -> list[list[int]]:
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


class MoodReader:
    """Reads the mood of messages, each on its own, with the few-shot prompt of its language."""

    def __init__(
        self,
        decoder: Decoder,
        label_head: LabelHead,
        *,
        mood_token_budget: int = 256,
        max_input_chars: int = 4000,
        batch_size: int = 16,
        instruction: str | None = None,
        examples: Mapping[str, Sequence[tuple[str, MoodLabel]]] | None = None,
        user_format: str | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        """Compute each prompt language's prefix KV cache once, here (no calibration until ``calibrate``).

        ``examples`` maps prompt languages (see ``prompt_language``) to their few-shot examples; a
        language without its own examples is read with the first language's. The label head's groups
        serve each language (English's a language missing there). ``lock`` is shared with whatever
        else runs ``decoder``.
        """
        self.decoder = decoder
        self.label_head = label_head
        self.mood_token_budget = mood_token_budget
        self.max_input_chars = max_input_chars
        self.batch_size = batch_size
        self.lock = lock or threading.RLock()
        prompt_options: dict[str, Any] = {}
        if instruction is not None:
            prompt_options["instruction"] = instruction
        if user_format is not None:
            prompt_options["user_format"] = user_format
        self._prompt_options = prompt_options
        examples_by_language = FEW_SHOT if examples is None else examples
        if not examples_by_language:
            raise ValueError("mood_examples names no prompt language")
        self._examples = {language: tuple(items) for language, items in examples_by_language.items()}
        self._prefixes: dict[str, MoodPrefix] = {}
        self.rebuild_prefixes()
        self._calibration = {language: torch.zeros(len(LABELS)) for language in self._prefixes}
        self._readouts: dict[str, LanguageReadout] = {}
        #: False: every language is read with plain label scores (benchmarks compare the two).
        self.readouts_enabled = True

    # ------------------------------------------------------------------ prompt

    @property
    def languages(self) -> tuple[str, ...]:
        """The prompt languages this reader has a prefix for, the fallback first."""
        return tuple(self._prefixes)

    def prefix(self, language: str) -> MoodPrefix:
        """The prefix (and its key/values) ``language``'s messages are read after."""
        return self._prefixes[language]

    def rebuild_prefixes(self) -> None:
        """Compute (or load from the decoder's prefix store) every language's prefix key/values anew."""
        with self.lock:
            self._prefixes = {
                language: self._build_prefix(language, examples)
                for language, examples in self._examples.items()
            }

    def _build_prefix(self, language: str, examples: tuple[tuple[str, MoodLabel], ...]) -> MoodPrefix:
        groups = self.label_head.groups
        if language not in groups:
            language = "en"
        parts = split_mood_prompt(
            self.decoder.render_chat,
            examples=examples,
            label_words=label_words_for(language),
            **self._prompt_options,
        )
        prefix_ids = self.decoder.encode(parts.prefix)
        return MoodPrefix(
            prefix_ids,
            self.decoder.encode(parts.suffix),
            self.decoder.prefix_key_values(prefix_ids),
            label_groups=groups[language],
        )

    def language_of(self, text: str) -> str:
        """The prompt language ``text`` is read in (the first one where it has no prefix of its own)."""
        language = prompt_language(text)
        return language if language in self._prefixes else next(iter(self._prefixes))

    def token_ids(self, text: str, language: str) -> list[int]:
        """The tokens run after ``language``'s prefix for ``text``: the cleaned message, then the suffix."""
        cleaned = clean_message(text, max_chars=self.max_input_chars)
        ids = self.decoder.encode(cleaned)
        if len(ids) > self.mood_token_budget:
            head = self.mood_token_budget * 3 // 4
            ids = ids[:head] + ids[-(self.mood_token_budget - head) :]
        return ids + self._prefixes[language].suffix_ids

    def lean_pass_check(self) -> tuple[KeyValues, list[int]]:
        """The first prefix's key/values and the tokens of a content-free read, to check a pass with."""
        language = self.languages[0]
        return self._prefixes[language].key_values, self.token_ids(LEAN_PASS_CHECK_INPUT, language)

    # ------------------------------------------------------------------ scores

    @torch.inference_mode()
    def label_scores(
        self, sequences: Sequence[list[int]], language: str, layers: Sequence[int] = ()
    ) -> MoodScores:
        """Uncalibrated label log-probabilities of ``sequences`` after ``language``'s prefix (each from
        ``token_ids``), run as one right-padded batch, with the outputs of ``layers`` averaged over each
        sequence's tokens."""
        prefix = self._prefixes[language]
        lengths = [len(sequence) for sequence in sequences]
        width = max(lengths)
        pad = self.decoder.tokenizer.pad_token_id
        pad = prefix.suffix_ids[-1] if pad is None else pad
        # Right padding: each row attends over the prefix and its own tokens only (see read_states).
        batch = torch.tensor([sequence + [pad] * (width - len(sequence)) for sequence in sequences])
        last, pooled = self.decoder.read_states(batch, lengths, prefix.key_values, layers)
        token_log_probs = torch.log_softmax(self.label_head.logits(last), dim=-1)
        per_label = torch.stack(
            [torch.logsumexp(token_log_probs[:, group], dim=-1) for group in prefix.label_groups], dim=-1
        )
        return MoodScores(torch.log_softmax(per_label, dim=-1), pooled)

    def adjust(self, scores: MoodScores, language: str) -> torch.Tensor:
        """The label log-probabilities of ``scores`` after ``language``'s readout (where it has one and
        ``readouts_enabled``) and its calibration."""
        readout = self._readouts.get(language) if self.readouts_enabled else None
        corrected = (
            scores.log_probs
            if readout is None
            else readout.scores(scores.log_probs, scores.pooled[readout.layer])
        )
        return torch.log_softmax(corrected - self._calibration[language], dim=-1)

    # ------------------------------------------------------------------ readout

    @property
    def hidden_size(self) -> int:
        """The width of the hidden states (what a readout's weight multiplies)."""
        return int(self.label_head.weight.shape[1])

    @property
    def layer_count(self) -> int:
        """How many decoder layers there are (a readout reads one below the last)."""
        return self.decoder.layer_count

    def readout_layers(self, language: str) -> tuple[int, ...]:
        """The layers a read in ``language`` must keep for its readout (none without one)."""
        readout = self._readouts.get(language) if self.readouts_enabled else None
        return () if readout is None else (readout.layer,)

    def prompt_digests(self) -> dict[str, str]:
        """Per language, the digest of its mood prompt as run (tokens, label rows): what readouts key to."""
        return {
            language: prompt_digest(prefix.prefix_ids, prefix.suffix_ids, prefix.label_groups)
            for language, prefix in self._prefixes.items()
        }

    def use_readouts(self, readouts: Mapping[str, LanguageReadout]) -> None:
        """Read these languages through their readouts from now on (the others with plain label scores)."""
        unknown = set(readouts) - set(self._prefixes)
        if unknown:
            raise ValueError(f"no mood prompt for {', '.join(sorted(unknown))}")
        wrong = [
            language
            for language, found in readouts.items()
            if found.hidden_size != self.hidden_size or not 0 < found.layer < self.layer_count
        ]
        if wrong:
            raise ValueError(
                f"the readout for {', '.join(wrong)} does not fit the hidden size {self.hidden_size} "
                f"or the {self.layer_count} layers"
            )
        with self.lock:
            self._readouts = dict(readouts)

    def readout(self, language: str) -> LanguageReadout | None:
        """``language``'s readout, None where it is read with plain label scores."""
        return self._readouts.get(language)

    def calibration(self, language: str) -> torch.Tensor:
        """The log-bias subtracted from ``language``'s label log-probabilities (zeros: none)."""
        return self._calibration[language]

    def calibrate(self) -> None:
        """Calibrate every language against the content-free inputs (contextual calibration)."""
        with self.lock:
            for language in self._prefixes:
                sequences = [self.token_ids(text, language) for text in CONTENT_FREE_INPUTS]
                scores = self.label_scores(sequences, language)
                probabilities = scores.log_probs.exp().mean(dim=0).clamp_min(1e-4)
                self._calibration[language] = probabilities.log()

    def mood_log_probs(self, texts: Sequence[str], *, calibrated: bool = True) -> torch.Tensor:
        """Label log-probabilities [len(texts), 3] in ``LABELS`` order (for benchmarks and tests).

        Texts are grouped by prompt language, and each group runs in length-sorted padded batches.
        """
        languages = [self.language_of(text) for text in texts]
        result = torch.zeros(len(texts), len(LABELS))
        with self.lock:
            for language in self._prefixes:
                indices = [index for index, other in enumerate(languages) if other == language]
                sequences = {index: self.token_ids(texts[index], language) for index in indices}
                order = sorted(indices, key=lambda index: len(sequences[index]))
                layers = self.readout_layers(language) if calibrated else ()
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    scores = self.label_scores([sequences[index] for index in chunk], language, layers)
                    result[chunk] = self.adjust(scores, language) if calibrated else scores.log_probs
        return result

    def classify(self, texts: Sequence[str]) -> list[Mood]:
        """Read the mood of each text on its own; one padded batch per ``batch_size`` texts."""
        if not texts:
            return []
        try:
            probabilities = self.mood_log_probs(texts).exp()
        except (RuntimeError, ValueError, IndexError) as error:
            raise ModelError(f"mood read failed: {type(error).__name__}") from error
        return [
            Mood.from_probabilities(dict(zip(LABELS, row, strict=True))) for row in probabilities.tolist()
        ]
