"""Attention for grouped-query models on CPU, without copying keys and values per query head.

transformers' SDPA path on CPU repeats every key/value head for each of its query heads whenever an
attention mask is present (``repeat_kv``), which is the case for every mood read: a batch of messages
runs after the cached few-shot prefix. For Qwen2.5-0.5B (14 query heads, 2 key/value heads) that copy
and the flash kernel's handling of short queries over a long prefix took about half of a batched mood
read. Here the query heads of one group are stacked into one matrix and multiplied with their shared
keys and values directly: two batched matmuls per layer and no copies. Masks are built exactly as for
SDPA (the same mask function is registered), then added to the scores as 0 / -inf, so sliding windows
and padding work unchanged; anything this path does not handle (dropout, soft-capping, attention
sinks, position biases, attention weights as output) goes to transformers' SDPA function. Decoding one
token at a time makes the call transformers' SDPA function makes there (torch's SDPA, which already runs
on the key/value heads without copies), and over a long cache a faster one (:func:`one_query_attention`),
without importing transformers.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

#: The name this attention is registered under in transformers' attention and mask interfaces.
ATTENTION_NAME = "moodmate_grouped"

#: Scores are computed for at most this many elements at a time (bounds the transient memory).
_MAX_SCORE_ELEMENTS = 8_000_000

_UNSUPPORTED_OPTIONS = ("softcap", "s_aux", "sinks", "position_bias")


def grouped_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,  # whatever transformers' attention interface passes on
) -> tuple[torch.Tensor, None]:
    """Causal attention of ``query [B, H, q, d]`` over ``key``/``value [B, Hkv, k, d]``, as ``[B, q, H, d]``.

    ``attention_mask`` is the 4-D mask transformers builds for SDPA (boolean, True = may attend, or
    additive floats), or None, which means plain causal attention aligned to the end of the keys.
    """
    unsupported = (
        dropout
        or kwargs.get("output_attentions")
        or any(kwargs.get(option) is not None for option in _UNSUPPORTED_OPTIONS)
        or query.shape[1] % key.shape[1]
    )
    if not unsupported and query.shape[2] == 1 and attention_mask is None and key.shape[-1] <= 256:
        output = one_query_attention(query, key, value, scaling)  # a decoding step
        return output.reshape(output.shape[0], -1, 1, value.shape[-1]).transpose(1, 2).contiguous(), None
    if unsupported or query.shape[2] == 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, query_length, dim = query.shape
    kv_heads, key_length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    mask = _grouped_mask(attention_mask, batch, kv_heads, groups, query_length, key_length, query)
    grouped_query = query.reshape(batch, kv_heads, groups, query_length, dim)
    key_t = key.transpose(-1, -2)  # [B, Hkv, d, k]
    step = max(1, _MAX_SCORE_ELEMENTS // max(1, batch * heads * key_length))
    outputs = []
    for start in range(0, query_length, step):
        stop = min(query_length, start + step)
        rows = grouped_query[:, :, :, start:stop].reshape(batch, kv_heads, groups * (stop - start), dim)
        scores = torch.matmul(rows, key_t).mul_(scale).view(batch, kv_heads, groups, stop - start, key_length)
        if mask is not None:  # in place: the scores are this step's own tensor
            scores.add_(mask[..., start:stop, :])
        probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        flat = probabilities.view(batch, kv_heads, groups * (stop - start), key_length)
        outputs.append(torch.matmul(flat, value).view(batch, kv_heads, groups, stop - start, dim))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=3)
    output = output.reshape(batch, heads, query_length, dim)
    return output.transpose(1, 2).contiguous(), None


#: From this many keys on, :func:`one_query_attention` gives SDPA each group's query heads as positions.
GROUPED_QUERY_KEYS = 256


def one_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """One query per sequence, ``query [B, H, 1, d]``, over ``key``/``value [B, Hkv, k, d]`` without a
    mask: ``[B, H, 1, d]``.

    From ``GROUPED_QUERY_KEYS`` keys on, each key/value head's query heads go into torch's SDPA as its
    query positions; before, SDPA gets ``enable_gqa``, as transformers calls it. A layer over 1,231 keys
    took 147 against 251 µs (an AMD EPYC), over 20 keys 35 against 24; ``bench/decode_steps.py``
    compares whole decoding steps. The two calls differ by about 1e-7.
    """
    if key.shape[-2] < GROUPED_QUERY_KEYS or query.shape[1] == key.shape[1]:
        gqa = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=None, dropout_p=0.0, scale=scale, is_causal=False, **gqa
        )
    batch, heads, _, dim = query.shape
    grouped = query.reshape(batch, key.shape[1], heads // key.shape[1], dim)
    output = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=None, dropout_p=0.0, scale=scale, is_causal=False
    )
    return output.reshape(batch, heads, 1, value.shape[-1])


def _grouped_mask(
    attention_mask: torch.Tensor | None,
    batch: int,
    kv_heads: int,
    groups: int,
    query_length: int,
    key_length: int,
    like: torch.Tensor,
) -> torch.Tensor | None:
    """The additive mask broadcastable to grouped scores ``[B, Hkv, groups, q, k]`` (None: none needed).

    The mask has the dtype and device of ``like`` (the queries).
    """
    if attention_mask is None:
        causal = causal_mask(query_length, key_length, like)
        return None if causal is None else causal.unsqueeze(2)
    mask = _additive(attention_mask, like.dtype)[..., :key_length]  # a static cache's mask may be longer
    if mask.shape[1] == 1:
        return mask.unsqueeze(2)  # [B|1, 1, 1, q, k]
    return mask.reshape(mask.shape[0], kv_heads, groups, query_length, key_length)


def causal_mask(query_length: int, key_length: int, like: torch.Tensor) -> torch.Tensor | None:
    """The additive causal mask ``[1, 1, q, k]`` for queries at the end of the keys (None for one query).

    Query i sits at position ``key_length - query_length + i`` and sees the keys up to there. The mask
    has the dtype and device of ``like``.
    """
    if query_length == 1:
        return None
    causal = torch.full((query_length, key_length), float("-inf"), dtype=like.dtype, device=like.device)
    return causal.triu_(key_length - query_length + 1)[None, None]


#: The last boolean mask turned additive (weakly held), its dtype and the result. Every layer of a
#: forward pass gets the same mask tensor, so it is converted once per pass, and forgotten with the mask.
_last_additive: tuple[weakref.ref[torch.Tensor], torch.dtype, torch.Tensor] | None = None


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as 0 / -inf to add to scores (True = may attend), or as given when already additive.

    Adding it gives the same scores, bit for bit, as filling the masked ones with -inf, about 10x faster
    on scores of a mood read (a 25-token message after the 524-token prefix: 24 vs 230 µs a layer).
    """
    global _last_additive
    if mask.dtype != torch.bool:
        return mask
    last = _last_additive
    if last is not None and last[0]() is mask and last[1] == dtype:
        return last[2]
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    _last_additive = (weakref.ref(mask, _forget_additive), dtype, additive)
    return additive


def _forget_additive(reference: weakref.ref[torch.Tensor]) -> None:
    global _last_additive
    last = _last_additive
    if last is not None and last[0] is reference:
        _last_additive = None


def use_grouped_attention(model: PreTrainedModel) -> bool:
    """Switch ``model`` from SDPA to :func:`grouped_attention`; returns whether it now uses it.

    Only models that run SDPA and support switching attention at run time are changed.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # a transformers release without pluggable attention: keep what the model has
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(ATTENTION_NAME, grouped_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    try:
        model.set_attn_implementation(ATTENTION_NAME)
    except (AttributeError, ValueError) as error:
        logger.debug("Keeping SDPA attention: %s", error)
        return False
    return bool(config._attn_implementation == ATTENTION_NAME)
