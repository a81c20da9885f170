"""``LanguageModel`` on transformers + torch, tuned for a small CPU.

Three parts share one loaded model and one lock:

* :mod:`bot.model.decoder` loads it (tokenizer, weights, int8 layers, grouped attention, the lean
  pass where it computes as transformers' pass does) and runs its passes;
* :mod:`bot.model.mood_reader` reads moods, one forward pass per message after a cached few-shot
  prefix, through the label head only;
* :mod:`bot.model.reply_generator` writes replies, token by token, reusing a conversation's cache.

With ``quantize`` the linear layers (including the output head) run with int8 weights and per-token
int8 activations, and the token embedding becomes int8 rows (see :mod:`bot.model.cpu_weights`), which
keeps RSS near a third of float32. The few-shot prefixes' key/values can be kept on disk between runs
(see :mod:`bot.model.prefix_store`). :meth:`TransformersModel.from_snapshot` builds the same model from
a start snapshot (see :mod:`bot.model.start_snapshot`) without transformers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from bot.errors import ModelNotFoundError
from bot.model.base import ChatTurn, StopCheck, TextCallback
from bot.model.cpu_weights import release_free_memory
from bot.model.decoder import Decoder, check_lean_pass, open_pretrained, prepare_decoder
from bot.model.lean_pass import LeanPass
from bot.model.mood_reader import LabelHead, MoodReader, build_label_head
from bot.model.prefix_store import PrefixStore, weights_identity
from bot.model.readout import LanguageReadout, load_readout
from bot.model.reply_generator import ReplyGenerator, SamplingConfig
from bot.model.start_snapshot import StartSnapshot, pack_in_background
from bot.types import Mood

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["SamplingConfig", "TransformersModel"]


class TransformersModel:
    """A causal language model from a Hugging Face directory, implementing ``LanguageModel``."""

    def __init__(
        self,
        name: str,
        decoder: Decoder,
        moods: MoodReader,
        replies: ReplyGenerator,
        *,
        identity: str | None = None,
    ) -> None:
        """Compose the parts (built on ``decoder``, sharing one lock); see ``load``.

        ``identity`` names the weights (what a mood readout file is keyed to); None: no readout applies.
        """
        self.name = name
        self.decoder = decoder
        self.moods = moods
        self.replies = replies
        self.identity = identity

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
        progress: bool = False,
        identity: str | None = None,
        readout_files: Sequence[Path] = (),
    ) -> TransformersModel:
        """Load a model directory (config.json, safetensors, tokenizer) or hub id for fast CPU inference.

        With ``prefix_cache_dir`` the few-shot prefixes' key/values are kept there between runs;
        ``progress`` shows a progress bar while the layers are quantized. ``identity`` names the weights
        (default: the directory's files, see ``weights_identity``); each of ``readout_files`` that exists
        and was fitted for them gives the mood reads of its languages a learned readout, a later file's
        languages taking precedence.
        """
        started = time.perf_counter()
        pretrained = open_pretrained(location, threads=threads)
        label_head = build_label_head(pretrained.model, pretrained.tokenizer)  # from the float weights
        decoder = prepare_decoder(
            pretrained, quantize=quantize, prefix_cache_dir=prefix_cache_dir, progress=progress
        )
        logger.info(
            "Loaded %s in %.1f s (weights %s, grouped attention=%s)",
            name,
            time.perf_counter() - started,
            decoder.weights,
            decoder.grouped_attention,
        )
        lock = threading.RLock()
        try:
            moods = MoodReader(decoder, label_head, max_input_chars=max_input_chars, lock=lock)
        except ValueError as error:  # e.g. a tokenizer without a chat template
            raise ModelNotFoundError(
                f"The model {name} cannot be used as a chat model ({error}): set MOODMATE_MODEL to an "
                "instruction-tuned model with a chat template."
            ) from error
        decoder.use_lean_pass(check_lean_pass(decoder, *moods.lean_pass_check()))
        if calibrate:
            moods.calibrate()
        if identity is None:
            identity = weights_identity(location, getattr(pretrained.model.config, "_commit_hash", None))
        if identity is not None:
            use_readouts(moods, identity, readout_files)
        replies = ReplyGenerator(decoder, max_input_chars=max_input_chars, sampling=sampling, lock=lock)
        release_free_memory()  # the prefix passes' scratch memory (~100 MB of RSS otherwise)
        logger.info("Model %s ready in %.1f s", name, time.perf_counter() - started)
        return cls(name, decoder, moods, replies, identity=identity)

    @classmethod
    def from_snapshot(
        cls,
        snapshot: StartSnapshot,
        *,
        threads: int = 0,
        max_input_chars: int = 4000,
        calibrate: bool = False,
        sampling: SamplingConfig | None = None,
        prefix_cache_dir: Path | None = None,
        identity: str | None = None,
        readout_files: Sequence[Path] = (),
    ) -> TransformersModel:
        """The model a start snapshot holds (see :mod:`bot.model.start_snapshot`), without transformers.

        Its lean pass was checked against transformers' pass when the snapshot was written. ``identity``
        and ``readout_files`` as for ``load`` (no identity: plain label scoring).
        """
        started = time.perf_counter()
        torch.set_num_threads(threads or os.cpu_count() or 1)
        store = None
        if prefix_cache_dir is not None and snapshot.prefix_identity is not None:
            store = PrefixStore(prefix_cache_dir, snapshot.prefix_identity)
        decoder = Decoder(
            cast("PreTrainedModel", snapshot.model),  # the lean CausalLM has what Decoder uses of one
            snapshot.tokenizer,
            weights=snapshot.weights,
            grouped_attention=True,
            prefix_store=store,
        )
        lean = LeanPass.for_decoder(decoder.layers)
        if lean is None:
            raise ModelNotFoundError(f"The start snapshot of {snapshot.name} holds no lean decoder")
        decoder.use_lean_pass(lean)
        lock = threading.RLock()
        label_head = LabelHead(snapshot.label_head, snapshot.label_bias, snapshot.label_groups)
        moods = MoodReader(decoder, label_head, max_input_chars=max_input_chars, lock=lock)
        if calibrate:
            moods.calibrate()
        if identity is not None:
            use_readouts(moods, identity, readout_files)
        replies = ReplyGenerator(decoder, max_input_chars=max_input_chars, sampling=sampling, lock=lock)
        logger.info(
            "Model %s ready from its start snapshot in %.2f s", snapshot.name, time.perf_counter() - started
        )
        return cls(snapshot.name, decoder, moods, replies, identity=identity)

    def prepare_replies(self) -> None:
        """Ready what only replies use (fbgemm's packed weights after a snapshot start) in the background."""
        pack_in_background(self.decoder.model)

    @property
    def weights(self) -> str:
        """What the linear layers run as (e.g. "float32" or an int8 kind)."""
        return self.decoder.weights

    @property
    def sampling(self) -> SamplingConfig:
        """How replies are sampled (changes apply to the next reply)."""
        return self.replies.sampling

    def classify(self, texts: Sequence[str]) -> list[Mood]:
        """Read the mood of each text on its own; one padded batch per ``moods.batch_size`` texts."""
        return self.moods.classify(texts)

    def mood_log_probs(self, texts: Sequence[str], *, calibrated: bool = True) -> torch.Tensor:
        """Label log-probabilities [len(texts), 3] in ``LABELS`` order (for benchmarks and tests)."""
        return self.moods.mood_log_probs(texts, calibrated=calibrated)

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
        return self.replies.generate(
            system, history, max_new_tokens=max_new_tokens, on_text=on_text, should_stop=should_stop
        )

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` under this model's tokenizer."""
        return len(self.decoder.encode(text))


def use_readouts(moods: MoodReader, identity: str, files: Sequence[Path]) -> None:
    """Give ``moods`` the readouts of ``files`` that fit the model and its prompts (later files win for
    a language), and say in one log line which languages read through which file."""
    readouts: dict[str, LanguageReadout] = {}
    sources: dict[str, Path] = {}
    prompts = moods.prompt_digests()
    for path in files:
        for language, readout in load_readout(
            path,
            model=identity,
            prompts=prompts,
            hidden_size=moods.hidden_size,
            layer_count=moods.layer_count,
        ).items():
            readouts[language], sources[language] = readout, path
    moods.use_readouts(readouts)
    plain = [language for language in moods.languages if language not in readouts]
    if readouts:
        logger.info(
            "Mood readout: %s%s",
            ", ".join(f"{language} from {sources[language]}" for language in readouts),
            f"; plain label scores for {', '.join(plain)}" if plain else "",
        )
    else:
        logger.info("Mood readout: none for this model, plain label scores")
