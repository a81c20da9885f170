"""Loading a causal language model for fast CPU inference, and the passes the mood reader and the reply
generator run through it.

* :func:`open_pretrained` reads the tokenizer and the weights of a Hugging Face directory (or hub id);
  :func:`prepare_decoder` then makes the linear layers int8 with ``quantize`` (see
  :mod:`bot.model.cpu_weights`), switches attention to grouped attention (see
  :mod:`bot.model.cpu_attention`) and sets up the on-disk store of prefix key/values (see
  :mod:`bot.model.prefix_store`). Whatever needs the float weights (the mood reader's label head) is
  taken in between.
* :class:`Decoder` holds the loaded model and runs it: encoding, chat rendering, KV caches, hidden
  states and next-token logits, by the lean pass (see :mod:`bot.model.lean_pass`) where
  :func:`check_lean_pass` found it computes as transformers' pass does.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from bot.errors import ModelNotFoundError
from bot.model.cpu_attention import use_grouped_attention
from bot.model.cpu_weights import prepare_for_cpu
from bot.model.lean_pass import LeanPass, mean_over_lengths
from bot.model.prefix_store import PrefixStore, weights_identity
from bot.model.versions import transformers_version

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]

#: At load the lean pass runs a mood read's tokens after the first prefix, as transformers' pass does,
#: and is used where the next-token logits differ by at most ``LEAN_PASS_TOLERANCE`` of the largest.
#: The two run the same arithmetic (equal bit for bit on the bundled model); the margin covers attention
#: implementations other than grouped attention (e.g. SDPA) summing in another order.
LEAN_PASS_TOLERANCE = 1e-4

#: Tokenizer classes that keep Python copies of their vocabulary and merges (``_vocab``, ``_merges``)
#: after building their Rust tokenizer from them and never read them again (transformers 5.24).
TOKENIZERS_WITH_BUILD_COPIES = ("Qwen2Tokenizer",)


@dataclass(slots=True)
class Pretrained:
    """A model and its tokenizer as read from disk, before :func:`prepare_decoder`."""

    model: PreTrainedModel
    tokenizer: Any
    location: Path | str


def open_pretrained(location: Path | str, *, threads: int = 0) -> Pretrained:
    """Read the tokenizer and weights at ``location`` (a model directory or a hub id), in eval mode.

    Raises ``ModelNotFoundError`` with a hint when nothing loadable is there.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(location))
        drop_build_copies(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(str(location), dtype="auto")
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
        where = f"the directory {location}" if isinstance(location, Path) else f"Hugging Face ({location})"
        raise ModelNotFoundError(
            f"Could not load a model from {where} ({type(error).__name__}): set MOODMATE_MODEL to a "
            "local directory with config.json, weights and a tokenizer, or to qwen2.5-coder-0.5b."
        ) from error
    model.eval()
    return Pretrained(model, tokenizer, location)


def prepare_decoder(
    pretrained: Pretrained,
    *,
    quantize: bool = True,
    prefix_cache_dir: Path | None = None,
    progress: bool = False,
) -> Decoder:
    """Ready ``pretrained`` for CPU inference (int8 weights with ``quantize``, grouped attention).

    With ``prefix_cache_dir`` the decoder keeps prefix key/values there between runs; ``progress``
    shows a progress bar while the layers are quantized.
    """
    model = pretrained.model
    weights = prepare_for_cpu(model, quantize=quantize, progress=progress)
    grouped = use_grouped_attention(model)
    store = None
    identity = weights_identity(pretrained.location, getattr(model.config, "_commit_hash", None))
    if prefix_cache_dir is not None and identity is not None:
        versions = f"torch {torch.__version__}, transformers {transformers_version()}"
        store = PrefixStore(prefix_cache_dir, f"{identity}|{weights}|grouped={grouped}|{versions}")
    return Decoder(
        model, pretrained.tokenizer, weights=weights, grouped_attention=grouped, prefix_store=store
    )


class Decoder:
    """A loaded causal language model and its tokenizer, run one pass at a time.

    Not thread-safe: the mood reader and the reply generator call it under one shared lock.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        weights: str = "as loaded",
        grouped_attention: bool = False,
        prefix_store: PrefixStore | None = None,
    ) -> None:
        """Wrap ``model`` (a ``*ForCausalLM``); ``weights`` says what its linear layers run as (e.g.
        "float32" or an int8 kind, see ``prepare_for_cpu``), ``grouped_attention`` whether attention runs
        on the key/value heads (see ``use_grouped_attention``)."""
        self._model = model
        self._tokenizer = tokenizer
        self._decoder: nn.Module = model.get_decoder()
        self._output_head: nn.Module = model.get_output_embeddings()
        self._decoder_cache_keyword = cache_keyword(self._decoder)
        self._model_cache_keyword = cache_keyword(model)
        self._prefix_store = prefix_store
        self._lean_pass: LeanPass | None = None
        self.weights = weights
        self.grouped_attention = grouped_attention

    @property
    def model(self) -> PreTrainedModel:
        """The whole causal language model (decoder and output head)."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self._tokenizer

    @property
    def layers(self) -> nn.Module:
        """The decoder without its output head (``model.get_decoder()``)."""
        return self._decoder

    @property
    def output_head(self) -> nn.Module:
        """The output head (hidden state -> vocabulary logits)."""
        return self._output_head

    @property
    def lean_pass(self) -> LeanPass | None:
        """The lean pass mood reads and reply steps run through; None: transformers' forward pass."""
        return self._lean_pass

    def use_lean_pass(self, lean: LeanPass | None) -> None:
        """Run mood reads and reply steps through ``lean`` (None: through transformers' pass)."""
        self._lean_pass = lean

    @property
    def prefix_store(self) -> PrefixStore | None:
        """Where prefix key/values are kept between runs (None: recomputed at every start)."""
        return self._prefix_store

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, without special tokens added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``, special tokens skipped."""
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """``messages`` through the tokenizer's chat template, with the assistant's cue at the end."""
        rendered = self._tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    def new_cache(self) -> Any:
        """An empty KV cache for this model (transformers' own, or its stand-in for the lean modules)."""
        from bot.model.lean_modules import CausalLM, KeyValueCache

        if isinstance(cast(nn.Module, self._model), CausalLM):  # a start snapshot's model
            return KeyValueCache()
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def seeded_cache(
        self,
        key_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        length: int | None = None,
    ) -> Any:
        """A fresh cache holding (the first ``length`` positions of) stored key/values; originals stay
        unchanged."""
        cache = self.new_cache()
        for layer_index, (keys, values) in enumerate(key_values):
            if length is not None:
                keys, values = keys[..., :length, :], values[..., :length, :]
            cache.update(keys, values, layer_index)
        return cache

    @staticmethod
    def cache_tensors(cache: Any) -> KeyValues:
        """The per-layer (keys, values) a cache holds."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    def run(self, input_ids: torch.Tensor, cache: Any) -> Any:
        """The decoder's outputs (``.last_hidden_state``) for ``input_ids`` after and joining ``cache``."""
        return self._decoder(input_ids=input_ids, use_cache=True, **{self._decoder_cache_keyword: cache})

    @torch.inference_mode()
    def prefix_key_values(self, prefix_ids: list[int]) -> KeyValues:
        """The key/values of ``prefix_ids`` from the start, from the prefix store where it has them."""
        if self._prefix_store is not None and (stored := self._prefix_store.load(prefix_ids)) is not None:
            return stored
        cache = self.new_cache()
        self.run(torch.tensor([prefix_ids]), cache)
        key_values = self.cache_tensors(cache)
        if self._prefix_store is not None:
            self._prefix_store.save(prefix_ids, key_values)
        return key_values

    @property
    def layer_count(self) -> int:
        """How many decoder layers the model has."""
        return int(self._model.config.num_hidden_layers)

    def read_states(
        self,
        batch: torch.Tensor,
        lengths: Sequence[int],
        key_values: KeyValues,
        pooled_layers: Sequence[int] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Each row's hidden state ``[n, hidden]`` at its last real token after the stored ``key_values``,
        and the output of each of ``pooled_layers`` (numbered from 1, below the last) averaged over each
        row's real tokens: ``{layer: [n, hidden]}``, float32. ``batch`` is right-padded to the longest of
        ``lengths``; a row reads the same alone or batched."""
        if any(not 0 < layer < self.layer_count for layer in pooled_layers):
            raise ValueError(f"pooled layers must lie in 1..{self.layer_count - 1}: {list(pooled_layers)}")
        if self._lean_pass is not None:
            return self._lean_pass.read_states(batch, list(lengths), key_values, pooled_layers)
        # transformers' pass reads each row alone (as the lean pass attends), so a read never depends on
        # what it is batched with.
        reads = [
            self._read_alone(batch[row : row + 1, :length], key_values, pooled_layers)
            for row, length in enumerate(lengths)
        ]
        return torch.cat([last for last, _ in reads]), {
            layer: torch.cat([pooled[layer] for _, pooled in reads]) for layer in pooled_layers
        }

    def _read_alone(
        self, tokens: torch.Tensor, key_values: KeyValues, pooled_layers: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """:meth:`read_states` of one unpadded row ``tokens [1, n]`` through transformers' pass."""
        cache = self.seeded_cache(key_values)
        if not pooled_layers:
            outputs = self.run(tokens, cache)
        else:  # transformers' decoder (the lean modules always have a lean pass)
            outputs = self._decoder(
                input_ids=tokens,
                use_cache=True,
                output_hidden_states=True,
                **{self._decoder_cache_keyword: cache},
            )
        # hidden_states[k] is layer k's output (hidden_states[0] the embeddings).
        return outputs.last_hidden_state[:, -1], {
            layer: mean_over_lengths(outputs.hidden_states[layer], [tokens.shape[1]])
            for layer in pooled_layers
        }

    def next_logits(self, input_ids: torch.Tensor, cache: Any, lean: LeanPass | None) -> torch.Tensor:
        """Logits ``[vocab]`` for the token after ``input_ids [1, n]``, whose keys/values join ``cache``.

        Computed by ``lean`` where given (e.g. ``self.lean_pass``), else by transformers' forward pass.
        """
        logits: torch.Tensor
        if lean is not None:
            logits = self._output_head(lean.extend(input_ids, cache))
        else:
            logits = self._model(
                input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._model_cache_keyword: cache}
            ).logits
        return logits[0, -1]


@torch.inference_mode()
def check_lean_pass(decoder: Decoder, key_values: KeyValues, token_ids: list[int]) -> LeanPass | None:
    """The lean pass where ``decoder`` has one and it computes as transformers' pass does.

    Compared on the next-token logits of ``token_ids`` after the stored ``key_values``.
    """
    lean = LeanPass.for_decoder(decoder.layers)
    if lean is None:
        return None
    for tokens in (torch.tensor([token_ids]), torch.tensor([token_ids[:1]])):  # a read, a decoding step
        expected = decoder.next_logits(tokens, decoder.seeded_cache(key_values), None)
        try:
            found = decoder.next_logits(tokens, decoder.seeded_cache(key_values), lean)
        except (RuntimeError, ValueError, IndexError, TypeError, AttributeError):
            logger.warning("Keeping transformers' forward pass: the lean pass failed", exc_info=True)
            return None
        difference = ((found - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
        if difference > LEAN_PASS_TOLERANCE:
            logger.warning("Keeping transformers' forward pass: the lean pass differs by %.2g", difference)
            return None
    return lean


def drop_build_copies(tokenizer: Any) -> None:
    """Free those copies (66 MB of RSS for the bundled Qwen2.5 tokenizer); the Rust tokenizer runs alone."""
    if type(tokenizer).__name__ not in TOKENIZERS_WITH_BUILD_COPIES:
        return
    for name in ("_vocab", "_merges"):
        if isinstance(getattr(tokenizer, name, None), (dict, list)):
            setattr(tokenizer, name, None)


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
