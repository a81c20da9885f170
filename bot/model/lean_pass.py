"""Mood reads and reply steps through the decoder's own layers, without transformers' forward pass.

A mood read runs a few message tokens after a stored few-shot prefix and keeps only each message's
last hidden state (and, for a mood readout, one layer's output averaged over the message's tokens); a
reply step runs one token (or a new turn's prompt) after the conversation's cache.
transformers' forward pass also builds cache objects, a causal mask through its mask functions, and goes
through decorators and keyword handling in every layer. :class:`LeanPass` calls the same modules in the
same order (embedding, rotary table, each layer's norms, projections, attention and MLP, the final
norm), so the numbers are the same bit for bit. On the bundled model with int8 weights:

* 200 dev messages' label log-probabilities were ``torch.equal`` to transformers' pass (so were
  SmolLM2's); read in turn in one process, chat-length messages took 101 ms instead of 107 alone and
  59 instead of 65 a message in batches of 8 (measured before each row of a batch attended in a call
  of its own, :func:`_attention_by_row`, which costs batches about 8% and makes a row read as
  transformers reads it alone);
* seeded replies were the same text, at 20.6 tokens/s instead of 18.5 (four runs each, in turn).

A decoding step (one token of one sequence) takes a shorter path through the same numbers where the
query, key and value projections are joined (:func:`_one_token_layer`).

It covers decoders built like Llama and Qwen2 (full causal attention, rotary positions, no norms on
queries and keys); anything else keeps transformers' pass (:meth:`LeanPass.for_decoder` returns None).
:func:`~bot.model.decoder.check_lean_pass` also compares the two passes once at load, and the model
keeps transformers' pass if they differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from bot.model.cpu_attention import causal_mask, grouped_attention, one_query_attention
from bot.model.cpu_weights import PackedInt8Linear, fbgemm_one_token

if TYPE_CHECKING:
    from transformers.cache_utils import Cache

#: ``config.model_type`` values whose decoder layers are built as this pass expects.
LEAN_MODEL_TYPES = frozenset({"llama", "qwen2"})

_DECODER_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")


class LeanPass:
    """A Llama/Qwen2-style decoder's layers called directly: mood reads after a prefix, reply steps."""

    def __init__(self, decoder: nn.Module) -> None:
        # A transformers decoder, its parts found by name (torch types those as Tensor | Module).
        parts: Any = decoder
        self._decoder = parts
        self._layers: list[Any] = list(parts.layers[: parts.config.num_hidden_layers])

    @classmethod
    def for_decoder(cls, decoder: nn.Module) -> LeanPass | None:
        """A pass over ``decoder`` (a model's ``get_decoder()``), or None where it is not built for one."""
        config = getattr(decoder, "config", None)
        if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
            return None
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            return None  # sliding-window layers
        if not all(hasattr(decoder, part) for part in _DECODER_PARTS):
            return None
        layers: Any = decoder.layers
        for layer in layers:
            attention = getattr(layer, "self_attn", None)
            if not all(hasattr(layer, part) for part in _LAYER_PARTS) or not all(
                hasattr(attention, part) for part in _ATTENTION_PARTS
            ):
                return None
            if hasattr(attention, "q_norm") or getattr(attention, "sliding_window", None):
                return None
        return cls(decoder)

    @torch.inference_mode()
    def read_states(
        self,
        input_ids: torch.Tensor,
        lengths: Sequence[int],
        key_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
        pooled_layers: Sequence[int] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``[batch, hidden]``: the final-norm hidden state at each row's last real token, and the output
        of each of ``pooled_layers`` (numbered from 1) averaged over each row's real tokens
        (``{layer: [batch, hidden]}``, float32).

        ``input_ids [batch, width]`` are right-padded to the longest of ``lengths``. Each row attends
        over the prefix and its own real tokens only, in a call of its own (see
        :func:`_attention_by_row`), so a row reads the same, bit for bit, alone or beside longer rows.
        ``key_values`` are the prefix's per-layer keys and values (``[1, kv_heads, prefix, head_dim]``),
        left unchanged.
        """
        batch = input_ids.shape[0]

        def after_prefix(index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
            keys, values = key_values[index]
            rows = key.shape[0]
            return (
                torch.cat((keys.expand(rows, -1, -1, -1), key), dim=-2),
                torch.cat((values.expand(rows, -1, -1, -1), value), dim=-2),
            )

        kept: dict[int, torch.Tensor] = {}
        hidden = self._run(
            input_ids, key_values[0][0].shape[2], after_prefix, kept, frozenset(pooled_layers), lengths
        )
        normed: torch.Tensor = self._decoder.norm(hidden[torch.arange(batch), torch.tensor(lengths) - 1])
        return normed, {layer: mean_over_lengths(kept[layer], lengths) for layer in pooled_layers}

    @torch.inference_mode()
    def extend(self, input_ids: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Run ``input_ids [batch, width]`` after what ``cache`` (a transformers cache) holds.

        Their keys and values are appended to ``cache``, as transformers' pass appends them; returns the
        final-norm hidden state of the last position, ``[batch, 1, hidden]``.
        """

        def appended(index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return cache.update(key, value, index)

        hidden = self._run(input_ids, cache.get_seq_length(), appended)
        normed: torch.Tensor = self._decoder.norm(hidden[:, -1:])
        return normed

    def _run(
        self,
        input_ids: torch.Tensor,
        past: int,
        join: KeyValueJoin,
        kept: dict[int, torch.Tensor] | None = None,
        keep: frozenset[int] = frozenset(),
        lengths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The last layer's output for ``input_ids`` at positions ``past``, ``past + 1``, …; the outputs
        of the layers numbered in ``keep`` (from 1) go into ``kept``. With ``lengths`` (right-padded
        rows) each row attends in a call of its own, over its real tokens."""
        width = input_ids.shape[1]
        hidden: torch.Tensor = self._decoder.embed_tokens(input_ids)
        rotary = self._decoder.rotary_emb(hidden, torch.arange(past, past + width).unsqueeze(0))
        if input_ids.shape == (1, 1) and self._one_token_ready and not keep:
            return self._one_token(hidden, rotary, join)
        masks: AttentionMasks = (
            causal_mask(width, past + width, hidden)
            if lengths is None
            else [(length, causal_mask(length, past + length, hidden)) for length in lengths]
        )
        for index, layer in enumerate(self._layers):
            hidden = _layer_forward(layer, index, hidden, rotary, join, masks)
            if kept is not None and index + 1 in keep:
                kept[index + 1] = hidden
        return hidden

    @functools.cached_property
    def _one_token_ready(self) -> bool:
        """Whether every layer has what :func:`_one_token_layer` calls: float32 RMS norms and a joined
        query/key/value layer of full-width heads."""
        return all(_one_token_parts(layer) for layer in self._layers)

    @functools.cached_property
    def _fbgemm_products(self) -> list[FbgemmProducts | None]:
        """Each layer's one-token products on fbgemm's packed weights, where it has them (packs them
        now if not yet)."""
        return [fbgemm_products(layer) for layer in self._layers]

    def _one_token(
        self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], join: KeyValueJoin
    ) -> torch.Tensor:
        """A decoding step's layers (one sequence, one token), as :func:`_one_token_layer` runs them."""
        cos, sin = (part.reshape(1, 1, 1, -1) for part in rotary)
        half = sin.shape[-1] // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        flat = hidden.reshape(1, -1)
        for index, (layer, products) in enumerate(zip(self._layers, self._fbgemm_products, strict=True)):
            flat = _one_token_layer(layer, index, flat, cos, signed_sin, join, products)
        return flat.reshape(hidden.shape)


def mean_over_lengths(hidden: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """``[batch, hidden]``: each row of right-padded ``hidden [batch, width, hidden]`` averaged over its
    first ``lengths[row]`` positions, in float32."""
    counts = torch.tensor(list(lengths))
    real = (torch.arange(hidden.shape[1]).unsqueeze(0) < counts.unsqueeze(1)).to(torch.float32)
    return (hidden.float() * real.unsqueeze(-1)).sum(dim=1) / counts.unsqueeze(1).to(torch.float32)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Llama/Qwen2 ``apply_rotary_pos_emb`` (the same ops; importing it costs ~2 s)."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


#: Joins a layer's new keys and values to those before them: ``(layer index, keys, values)`` to the
#: keys and values the new tokens attend to.
KeyValueJoin = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]

#: The causal mask of a whole batch (None: one query), or per right-padded row its length and mask.
AttentionMasks = torch.Tensor | None | list[tuple[int, torch.Tensor | None]]


def _one_token_parts(layer: Any) -> bool:
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if not all(
        isinstance(getattr(norm, "weight", None), torch.Tensor)
        and norm.weight.dtype == torch.float32
        and isinstance(getattr(norm, "variance_epsilon", None), float)
        for norm in norms
    ):
        return False
    attention = layer.self_attn
    joined = getattr(attention, "fused_qkv", None)
    sizes = getattr(joined, "sizes", None)
    if not (isinstance(sizes, tuple) and len(sizes) == 3 and isinstance(joined, nn.Module)):
        return False
    query, key, value = sizes
    head_dim = attention.head_dim
    return bool(key == value and key > 0 and query % head_dim == 0 and key % head_dim == 0)


class FbgemmProducts(NamedTuple):
    """One layer's decoding-step products called on fbgemm's packed weights directly (see
    :func:`fbgemm_products`)."""

    query_key_value: Any
    query_key_value_bias: torch.Tensor | None
    attention_output: Any
    gate: Any
    up: Any
    down: Any

    def joined_projection(self, normed: torch.Tensor) -> torch.Tensor:
        """The joined query/key/value product of one token, with its bias."""
        joined = fbgemm_one_token(normed, self.query_key_value)
        return joined if self.query_key_value_bias is None else joined.add_(self.query_key_value_bias)

    def mlp(self, normed: torch.Tensor) -> torch.Tensor:
        """``down(silu(gate(x)) * up(x))`` for one token."""
        gate = nn.functional.silu(fbgemm_one_token(normed, self.gate))
        gated = gate.mul_(fbgemm_one_token(normed, self.up))
        return fbgemm_one_token(gated, self.down)


def fbgemm_products(layer: Any) -> FbgemmProducts | None:
    """The fbgemm weights of a layer that passed :func:`_one_token_parts`, where every product of its
    decoding step is a :class:`~bot.model.cpu_weights.PackedInt8Linear` (fbgemm for one token) and its
    MLP is the silu-gated one; None otherwise.

    A step then calls fbgemm itself, as those layers would, without their module calls, reshapes and
    slices: the same numbers bit for bit, and on an AMD EPYC (2 threads, AVX2) a decoding step of the
    bundled model took 52.0 against 57.7 ms (medians of nine rounds of 32 steps, in turn).
    """
    attention, mlp = layer.self_attn, layer.mlp
    linears = [
        attention.fused_qkv.fused,
        attention.o_proj,
        *(getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")),
    ]
    if not all(isinstance(linear, PackedInt8Linear) for linear in linears):
        return None
    if any(linear.bias is not None for linear in linears[1:]) or not _silu_gated(mlp):
        return None
    joined, output, gate, up, down = linears
    return FbgemmProducts(
        joined.one_token_weights(),
        joined.bias,
        *(linear.one_token_weights() for linear in (output, gate, up, down)),
    )


def _silu_gated(mlp: Any) -> bool:
    """Whether ``mlp`` computes ``down(silu(gate(x)) * up(x))``: the lean modules' or transformers'
    Llama/Qwen2 MLP with its silu activation."""
    if getattr(mlp, "silu_gated", False):
        return True
    activation = getattr(mlp, "act_fn", None)
    return type(mlp).__name__ in ("Qwen2MLP", "LlamaMLP") and (
        isinstance(activation, nn.SiLU) or type(activation).__name__ == "SiLUActivation"
    )


def _rms_norm(norm: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``norm(hidden)`` for an RMS norm that passed :func:`_one_token_parts`, in one call."""
    return torch.nn.functional.rms_norm(hidden, hidden.shape[-1:], norm.weight, norm.variance_epsilon)


def _one_token_layer(
    layer: Any,  # a decoder layer that passed _one_token_parts
    index: int,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    join: KeyValueJoin,
    products: FbgemmProducts | None = None,
) -> torch.Tensor:
    """:func:`_layer_forward` for one token of one sequence (``hidden [1, hidden size]``), bit for bit
    the same numbers in fewer operations: each norm as one ``rms_norm`` call, the joined query/key/value
    product sliced in place, and the rotation applied to the query and key heads at once, with the sign
    of ``rotate_half`` folded into ``signed_sin``. On the bundled model's int8 weights (2 threads) a
    step took 28 ms instead of 33 (the int8 products alone take about 25), seeded replies the same text.
    With ``products`` the products call fbgemm directly (see :func:`fbgemm_products`)."""
    attention = layer.self_attn
    head_dim = attention.head_dim
    query_size, key_size, _ = attention.fused_qkv.sizes
    normed = _rms_norm(layer.input_layernorm, hidden)
    joined = attention.fused_qkv.fused(normed) if products is None else products.joined_projection(normed)
    heads = (query_size + key_size) // head_dim
    rotated = joined[:, : query_size + key_size].view(1, heads, 1, head_dim)
    half = head_dim // 2
    swapped = torch.cat((rotated[..., half:], rotated[..., :half]), dim=-1)
    rotated = (rotated * cos) + (swapped * signed_sin)
    query_heads = query_size // head_dim
    query, key = rotated[:, :query_heads], rotated[:, query_heads:]
    value = joined[:, query_size + key_size :].view(1, key_size // head_dim, 1, head_dim)
    keys, values = join(index, key, value)
    output = one_query_attention(query, keys, values, attention.scaling).reshape(1, query_size)
    if products is None:
        hidden = hidden + attention.o_proj(output)
    else:
        hidden = hidden + fbgemm_one_token(output, products.attention_output)
    normed = _rms_norm(layer.post_attention_layernorm, hidden)
    mlp: torch.Tensor = layer.mlp(normed) if products is None else products.mlp(normed)
    return hidden + mlp


def _layer_forward(
    layer: Any,  # a transformers decoder layer, its parts found by name
    index: int,
    hidden: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    join: KeyValueJoin,
    masks: AttentionMasks,
) -> torch.Tensor:
    """One decoder layer, as transformers' Llama/Qwen2 layer computes it (attention row by row where
    ``masks`` holds one per row)."""
    attention = layer.self_attn
    batch, width, _ = hidden.shape
    heads_shape = (batch, width, -1, attention.head_dim)
    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(normed).view(heads_shape).transpose(1, 2)
    key = attention.k_proj(normed).view(heads_shape).transpose(1, 2)
    value = attention.v_proj(normed).view(heads_shape).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, *rotary)
    if isinstance(masks, list):
        output = _attention_by_row(attention, index, query, key, value, join, masks)
    else:
        keys, values = join(index, key, value)
        output, _ = grouped_attention(attention, query, keys, values, masks, scaling=attention.scaling)
    attended: torch.Tensor = attention.o_proj(output.reshape(batch, width, -1).contiguous())
    hidden = hidden + attended
    mlp: torch.Tensor = layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden + mlp


def _attention_by_row(
    attention: Any,
    index: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    join: KeyValueJoin,
    masks: list[tuple[int, torch.Tensor | None]],
) -> torch.Tensor:
    """``[batch, width, heads, head_dim]``: each right-padded row's real queries attending, in a call of
    their own, over the keys before them and the row's real keys (pads get zeros).

    A row's arithmetic then has the shapes it has alone. With one call over the batch, the masked keys
    of longer rows changed the float rounding of a row's attention by about 1e-7; a rounding that then
    crossed an int8 step grew through the layers, and the bundled model read 15 of 16 chat messages
    more than 0.01 (up to 0.22) apart in label log-probability alone and beside a longer one.
    """
    batch, heads, width, head_dim = query.shape
    output = query.new_zeros(batch, width, heads, head_dim)
    for row, (length, mask) in enumerate(masks):
        keys, values = join(index, key[row : row + 1, :, :length], value[row : row + 1, :, :length])
        attended, _ = grouped_attention(
            attention, query[row : row + 1, :, :length], keys, values, mask, scaling=attention.scaling
        )
        output[row, :length] = attended[0]
    return output
