"""Make a loaded transformers model fast and small on a CPU: int8 linear layers, half-precision embedding.

Linear layers (the output head included) become :class:`Int8Linear`: symmetric int8 weights per output
channel, activations quantized to int8 per token at run time, exact int32 accumulation
(``torch._int_mm``), which is as fast here as torch's dynamic-quantized linear layers (fbgemm) and far
more accurate: those quantize all tokens of a call with one 7-bit scale, so tokens with huge
activations coarsen all others and a message's mood depended on what it was batched with (label KL vs
float32 0.071 with fbgemm, 0.003 with per-token int8, measured on 400 dev messages).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Int8 layers are used only where an int8 matrix product is at most this many times slower than a
#: float32 one. On CPUs without int8 dot-product instructions (AVX2 only, measured on an AMD EPYC)
#: ``torch._int_mm`` ran ~20x slower than float32 and a mood read took 2.3 s instead of 0.28 s.
INT8_SLOWDOWN_LIMIT = 2.0


class HalfEmbedding(nn.Module):
    """A token embedding kept in half precision that returns float32 vectors.

    The weight is a plain attribute (not a parameter or buffer) so ``Module.float()`` never upcasts it.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.half_weight = weight.detach()
        self.num_embeddings, self.embedding_dim = weight.shape

    @property
    def weight(self) -> torch.Tensor:  # some library code reads .weight.dtype/.shape
        return self.half_weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.half_weight).float()


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per output channel) and int8 activations (per token).

    Each token's input vector is quantized with its own scale, so a token's result never depends on the
    other tokens in the call (a mood read is the same alone or batched), and one token with huge
    activations does not coarsen the others. The int8 product accumulates exactly in int32
    (``torch._int_mm``), then one float multiply restores the scales.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_per_chunk: int = 8192) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        scales = torch.empty(self.out_features, dtype=torch.float32)
        quantized = torch.empty(weight.shape, dtype=torch.int8)
        for start in range(0, self.out_features, rows_per_chunk):  # chunks keep float temporaries small
            block = weight[start : start + rows_per_chunk].float()
            block_scales = block.abs().amax(dim=1).clamp_min(1e-8) / 127.0
            scales[start : start + rows_per_chunk] = block_scales
            quantized[start : start + rows_per_chunk] = torch.round(block / block_scales[:, None])
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("weight_scale", scales)
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features)
        scale = flat.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
        quantized = torch.round(flat / scale).to(torch.int8)
        output = torch._int_mm(quantized, self.weight_int8.t()).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int8_slowdown(rows: int = 32, inner: int = 896, columns: int = 4864, repeats: int = 3) -> float:
    """How many times slower an int8 matrix product (``torch._int_mm``) is than float32 on this CPU."""
    left = torch.randint(-127, 128, (rows, inner), dtype=torch.int8)
    right = torch.randint(-127, 128, (inner, columns), dtype=torch.int8)
    left_float, right_float = left.float(), right.float()

    def best(product) -> float:  # type: ignore[no-untyped-def]
        product()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            product()
            times.append(time.perf_counter() - started)
        return min(times)

    int8 = best(lambda: torch._int_mm(left, right))
    return int8 / max(best(lambda: left_float @ right_float), 1e-9)


def prepare_for_cpu(model: nn.Module, *, quantize: bool) -> bool:
    """Make ``model`` run fast on CPU: :class:`Int8Linear` layers when ``quantize``, else float32.

    Int8 layers are skipped (float32 instead) on a CPU where int8 products are much slower than float32
    ones (see ``INT8_SLOWDOWN_LIMIT``). Returns whether the model was quantized.
    """
    if quantize:
        slowdown = int8_slowdown()
        if slowdown > INT8_SLOWDOWN_LIMIT:
            logger.warning(
                "int8 matrix products are %.0fx slower than float32 on this CPU: running float32 weights "
                "(faster here, about twice the memory)",
                slowdown,
            )
            quantize = False
    if not quantize:
        model.float()
        release_free_memory()
        return False
    _small_parameters_to_float(model)
    embedding = model.get_input_embeddings()
    if embedding.weight.dtype != torch.float32:
        # A private copy of the half-precision embedding, so the memory-mapped checkpoint can be released.
        model.set_input_embeddings(HalfEmbedding(embedding.weight.detach().clone()))
    del embedding
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        bias = linear.bias.detach() if linear.bias is not None else None
        _set_submodule(model, name, Int8Linear(linear.weight.detach(), bias))
    gc.collect()
    release_free_memory()
    return True


def _small_parameters_to_float(model: nn.Module) -> None:
    """Norm weights, non-linear biases and float buffers to float32 (linears and embedding stay)."""
    embedding = model.get_input_embeddings()
    for module in model.modules():
        if isinstance(module, nn.Linear) or module is embedding:
            continue
        for param_name, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point() and param.dtype != torch.float32:
                setattr(module, param_name, nn.Parameter(param.detach().float(), requires_grad=False))
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                module._buffers[buffer_name] = buffer.float()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, inflating RSS after loading)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
