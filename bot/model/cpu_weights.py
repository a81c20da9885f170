"""Make a loaded transformers model fast and small on a CPU: int8 linear layers, half-precision embedding.

Linear layers (the output head included) get int8 weights per output channel and int8 activations
quantized **per token** at run time, so a token's result never depends on the other tokens of the call:

* :class:`Int8Linear` (``torch._int_mm``) where the CPU has fast int8 dot products (AVX-512/VNNI).
* :class:`PackedInt8Linear` (fbgemm's prepacked kernels, fast with AVX2 alone) where ``_int_mm`` is
  slow. fbgemm quantizes all tokens of a call with one scale; scaling each token to the same range
  first makes that scale per token again.
* float32 weights where neither int8 product beats float32.

Plain fbgemm dynamic quantization (one 7-bit scale per call) let tokens with huge activations coarsen
all others, and a message's mood depended on what it was batched with (label KL vs float32 0.071 with
it, 0.003 with per-token int8, measured on 400 dev messages).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: An int8 layer kind is used only where its matrix product is at most this many times slower than a
#: float32 one. On CPUs without int8 dot-product instructions (AVX2 only, measured on an AMD EPYC)
#: ``torch._int_mm`` ran ~20x slower than float32 (a mood read took 2.3 s instead of 0.28 s), while
#: fbgemm's prepacked int8 product ran ~3x faster than float32.
#: The checks use a quarter of an MLP matrix (1216 columns), with ratios there (38x and 0.7x) as far from
#: the limit as at full size (22x and 0.4x); they took ~0.13 s for both on two threads there (one thread
#: now, see ``_slowdown``: expect up to twice that), 0.02-0.1 s on an AVX-512 VNNI Xeon (0.3x and 0.5x).
INT8_SLOWDOWN_LIMIT = 2.0

#: :class:`PackedInt8Linear`'s weights use [-63, 63], so AVX2's int16 pair sums never overflow.
PACKED_WEIGHT_LIMIT = 63


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

    #: How the numbers are rounded; part of the prefix store's key, so change it with the arithmetic.
    numerics: ClassVar[str] = "weights in ±127, 8-bit activations per token"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_per_chunk: int = 8192) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        quantized, scales = _int8_per_channel(weight, rows_per_chunk)
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


class PackedInt8Linear(nn.Module):
    """A linear layer on fbgemm's prepacked int8 kernels, with per-token activation scales.

    fbgemm's dynamic linear quantizes its whole input with one range. Each token is first divided by
    its own largest magnitude, and one constant row holding +1 and -1 joins the call, so the shared range
    is always [-1, 1] whatever else is in the batch: the quantization is per token, and a mood read is
    the same alone or batched. The token scales are multiplied back afterwards.

    Activations get all 8 bits and weights 7 (±63): AVX2's int8 product adds pairs of uint8 x int8
    products in int16, which 8-bit weights beside 8-bit activations can overflow (fbgemm's usual answer,
    ``reduce_range``, takes the bit from the activations instead). Measured on all 2000 TweetEval dev
    tweets: macro-recall 0.623 with 7-bit activations, 0.633 with 8-bit ones, as with ``Int8Linear``.
    """

    #: How the numbers are rounded; part of the prefix store's key, so change it with the arithmetic.
    numerics: ClassVar[str] = f"weights in ±{PACKED_WEIGHT_LIMIT}, 8-bit activations per token"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        quantized, scales = _int8_per_channel(weight, limit=PACKED_WEIGHT_LIMIT)
        with warnings.catch_warnings():  # torch marks quantized-tensor creation deprecated; fbgemm needs it
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                quantized, scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0
            )
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)  # fbgemm's own copy
        del qweight, quantized
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else None)
        range_row = torch.zeros(1, self.in_features)
        range_row[0, 0], range_row[0, -1] = 1.0, -1.0
        self.register_buffer("range_row", range_row)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features)
        if flat.shape[0] == 1:  # one token (a decoding step): fbgemm's range is already this token's own
            output = torch.ops.quantized.linear_dynamic(flat, self._packed, False)
        else:
            scale = flat.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
            rows = torch.cat([flat / scale, self.range_row])
            output = torch.ops.quantized.linear_dynamic(rows, self._packed, False)[:-1].mul_(scale)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm)"


def _int8_per_channel(
    weight: torch.Tensor, rows_per_chunk: int = 8192, *, limit: int = 127
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weights in [-limit, limit] and float32 scales per output row.

    Chunks of rows keep the float temporaries small; each chunk is divided and rounded in place in one
    float copy (about 3x faster than the same arithmetic with a temporary per step, same numbers).
    """
    scales = torch.empty(weight.shape[0], dtype=torch.float32)
    quantized = torch.empty(weight.shape, dtype=torch.int8)
    for start in range(0, weight.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        block = weight[rows]
        scales[rows] = block.abs().amax(dim=1).float().clamp_min(1e-8) / limit
        quantized[rows] = block.to(torch.float32, copy=True).div_(scales[rows, None]).round_()
    return quantized, scales


def _slowdown(candidate: Callable[[], object], reference: Callable[[], object], repeats: int) -> float:
    """How many times slower ``candidate`` runs than ``reference``, best run against best run.

    The two run in turn (so a busy moment slows both) on one thread: with two, every product waits for
    the slower thread, and another process on one core made the int8 products look up to 15x slower
    than float32 in 2 of 8 checks here (a CPU where they are 3x faster), which sent a load to float32.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = [float("inf"), float("inf")]
    try:
        candidate(), reference()  # warm-up
        for _ in range(repeats):
            for index, product in enumerate((candidate, reference)):
                started = time.perf_counter()
                product()
                best[index] = min(best[index], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return best[0] / max(best[1], 1e-9)


def int8_slowdown(rows: int = 32, inner: int = 896, columns: int = 1216, repeats: int = 3) -> float:
    """How many times slower an int8 matrix product (``torch._int_mm``) is than float32 on this CPU."""
    left = torch.randint(-127, 128, (rows, inner), dtype=torch.int8)
    right = torch.randint(-127, 128, (inner, columns), dtype=torch.int8)
    left_float, right_float = left.float(), right.float()
    return _slowdown(lambda: torch._int_mm(left, right), lambda: left_float @ right_float, repeats)


def packed_int8_slowdown(rows: int = 32, inner: int = 896, columns: int = 1216, repeats: int = 3) -> float:
    """How many times slower a :class:`PackedInt8Linear` is than a float32 linear layer on this CPU."""
    weight = torch.randn(columns, inner) / inner**0.5
    hidden = torch.randn(rows, inner)
    try:
        packed = PackedInt8Linear(weight, None)
    except RuntimeError:  # no fbgemm in this torch build
        return float("inf")
    return _slowdown(lambda: packed(hidden), lambda: nn.functional.linear(hidden, weight), repeats)


def choose_int8_layer() -> type[Int8Linear] | type[PackedInt8Linear] | None:
    """The int8 layer kind that is fast on this CPU, or None where float32 is faster than both."""
    slowdown = int8_slowdown()
    if slowdown <= INT8_SLOWDOWN_LIMIT:
        return Int8Linear
    packed_slowdown = packed_int8_slowdown()
    if packed_slowdown <= INT8_SLOWDOWN_LIMIT:
        logger.info(
            "int8 products (_int_mm) are %.0fx slower than float32 on this CPU: using fbgemm's int8 "
            "kernels (%.1fx the float32 time)",
            slowdown,
            packed_slowdown,
        )
        return PackedInt8Linear
    logger.warning(
        "int8 matrix products are %.0fx slower than float32 on this CPU: running float32 weights "
        "(faster here, about twice the memory)",
        min(slowdown, packed_slowdown),
    )
    return None


def prepare_for_cpu(model: nn.Module, *, quantize: bool) -> str:
    """Make ``model`` run fast on CPU: int8 linear layers when ``quantize``, else float32.

    The int8 layer kind is the one fast on this CPU (see :func:`choose_int8_layer`); where none is,
    the model runs float32 weights. Returns what the linear layers now are: "float32" or the int8
    layer kind's name and numerics.
    """
    layer_kind = choose_int8_layer() if quantize else None
    if layer_kind is None:
        model.float()
        release_free_memory()
        return "float32"
    _small_parameters_to_float(model)
    embedding = model.get_input_embeddings()
    if embedding.weight.dtype != torch.float32:
        # A private copy of the half-precision embedding, so the memory-mapped checkpoint can be released.
        model.set_input_embeddings(HalfEmbedding(embedding.weight.detach().clone()))
    del embedding
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    # The largest first: the output head alone takes ~1.9 s to pack on one core, the rest overlaps it.
    linears.sort(key=lambda named: named[1].weight.numel(), reverse=True)

    def convert(linear: nn.Linear) -> nn.Module:
        return layer_kind(linear.weight.detach(), linear.bias.detach() if linear.bias is not None else None)

    # Two layers at a time: fbgemm's weight packing runs on one core (and releases the GIL), so two
    # layers pack at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for (name, _), converted in zip(
            linears, pool.map(convert, [linear for _, linear in linears]), strict=True
        ):
            _set_submodule(model, name, converted)
    del linears
    gc.collect()
    release_free_memory()
    return f"{layer_kind.__name__} ({layer_kind.numerics})"


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
