"""A Llama/Qwen2-style decoder in plain torch modules, so a start from the snapshot needs no transformers.

:func:`lean_copy` rebuilds a loaded transformers model (after :func:`~bot.model.cpu_weights.prepare_for_cpu`)
from these modules, reusing its converted layers: the norms, MLP and rotary table compute what
transformers' Qwen2/Llama modules compute, op for op, so :class:`~bot.model.lean_pass.LeanPass` gives
the same numbers bit for bit on either. :class:`KeyValueCache` stands in for transformers'
``DynamicCache`` (the same concatenation). Only what the lean pass runs is here: a model these
modules cannot rebuild (another architecture, activation or RoPE kind) gets None and keeps transformers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: The config fields the modules read (copied from the transformers config into the snapshot).
CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "vocab_size",
    "layer_types",
    "eos_token_id",
)


class RMSNorm(nn.Module):
    """transformers' ``Qwen2RMSNorm`` / ``LlamaRMSNorm``."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))``, as transformers' Qwen2/Llama MLP with ``hidden_act="silu"``."""

    #: Read by the lean pass's decoding step, which then computes this MLP itself.
    silu_gated = True

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
        return output


class Attention(nn.Module):
    """The projections and sizes of one attention layer (the lean pass computes the attention)."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.head_dim = source.head_dim
        self.scaling = source.scaling
        self.num_key_value_groups = source.num_key_value_groups
        self.is_causal = True
        for name, child in source.named_children():  # q/k/v/o projections, the joined q/k/v layer
            self.add_module(name, child)
        for name in ("q_proj", "k_proj", "v_proj"):  # ProjectionSlice keeps its group unregistered
            if name not in self._modules:
                object.__setattr__(self, name, getattr(source, name))


class DecoderLayer(nn.Module):
    def __init__(self, self_attn: Attention, mlp: nn.Module, input_norm: RMSNorm, post_norm: RMSNorm) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_norm
        self.post_attention_layernorm = post_norm


class RotaryEmbedding(nn.Module):
    """transformers' default RoPE table: ``(cos, sin)`` for positions, from the same ``inv_freq``."""

    inv_freq: torch.Tensor

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.detach().clone(), persistent=True)
        self.attention_scaling = attention_scaling

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


@dataclass
class DecoderOutput:
    last_hidden_state: torch.Tensor


class Decoder(nn.Module):
    """The decoder: embedding, layers, final norm and rotary table, with ``forward`` over a cache."""

    def __init__(
        self,
        config: SimpleNamespace,
        embed: nn.Module,
        layers: list[DecoderLayer],
        norm: RMSNorm,
        rotary: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = embed
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.rotary_emb = rotary

    def forward(self, input_ids: torch.Tensor, use_cache: bool = True, cache: Any = None) -> DecoderOutput:
        """All positions' final-norm hidden states for ``input_ids`` after ``cache`` (appended to it)."""
        from bot.model.lean_pass import LeanPass

        assert cache is not None
        lean = LeanPass(self)
        hidden = lean._run(input_ids, cache.get_seq_length(), lambda i, k, v: cache.update(k, v, i))
        return DecoderOutput(self.norm(hidden))


class CausalLM(nn.Module):
    """The decoder and its output head, with the accessors ``TransformersModel`` uses."""

    def __init__(self, config: SimpleNamespace, decoder: Decoder, lm_head: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.model = decoder
        self.lm_head = lm_head
        self.generation_config = SimpleNamespace(eos_token_id=getattr(config, "eos_token_id", None))

    def get_decoder(self) -> Decoder:
        return self.model

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        """``.logits [batch, width, vocab]`` of every position of ``input_ids``, from an empty cache."""
        hidden = self.model(input_ids, cache=KeyValueCache()).last_hidden_state
        return SimpleNamespace(logits=self.lm_head(hidden))


class _CacheLayer:
    __slots__ = ("keys", "values")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


class KeyValueCache:
    """Per-layer keys and values, grown by concatenation as transformers' ``DynamicCache`` grows them."""

    def __init__(self) -> None:
        self.layers: list[_CacheLayer] = []

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_index == len(self.layers):
            self.layers.append(_CacheLayer(keys, values))
        else:
            layer = self.layers[layer_index]
            layer.keys = torch.cat([layer.keys, keys], dim=-2)
            layer.values = torch.cat([layer.values, values], dim=-2)
        layer = self.layers[layer_index]
        return layer.keys, layer.values

    def get_seq_length(self) -> int:
        return int(self.layers[0].keys.shape[-2]) if self.layers else 0


def lean_copy(model: Any) -> CausalLM | None:
    """``model`` rebuilt from these modules around its own (converted) layers, or None where unsupported.

    The two share their layers; drop ``model`` afterwards.
    """
    config = model.config
    if getattr(config, "model_type", None) not in ("qwen2", "llama"):
        return None
    if getattr(config, "hidden_act", None) != "silu":
        return None
    decoder = model.get_decoder()
    rotary = getattr(decoder, "rotary_emb", None)
    if (
        rotary is None
        or getattr(rotary, "rope_type", "default") != "default"
        or not hasattr(rotary, "inv_freq")
    ):
        return None
    layers = []
    for layer in decoder.layers:
        attention, mlp = layer.self_attn, layer.mlp
        if hasattr(attention, "q_norm") or getattr(attention, "sliding_window", None):
            return None
        if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
            return None
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        if not all(_is_rms_norm(norm) for norm in norms):
            return None
        layers.append(
            DecoderLayer(
                Attention(attention),
                GatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj),
                *(RMSNorm(norm.weight.detach(), norm.variance_epsilon) for norm in norms),
            )
        )
    if not _is_rms_norm(decoder.norm):
        return None
    values = {name: getattr(config, name, None) for name in CONFIG_FIELDS}
    lean_config = SimpleNamespace(**values)
    lean_decoder = Decoder(
        lean_config,
        model.get_input_embeddings(),
        layers,
        RMSNorm(decoder.norm.weight.detach(), decoder.norm.variance_epsilon),
        RotaryEmbedding(rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0))),
    )
    return CausalLM(lean_config, lean_decoder, model.get_output_embeddings())


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__ in ("Qwen2RMSNorm", "LlamaRMSNorm", "RMSNorm") and hasattr(
        module, "variance_epsilon"
    )
