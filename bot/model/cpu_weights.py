"""Make a loaded transformers model fast and small on a CPU: int8 linear layers, int8 embedding rows.

Linear layers (the output head included) get int8 weights per output channel and int8 activations
quantized **per token** at run time, so a token's result never depends on the other tokens of the call:

* :class:`Int8Linear` (``torch._int_mm``, fast where the CPU has int8 dot products, AVX-512/VNNI).
* :class:`PackedInt8Linear` (fbgemm's prepacked kernels, fast with AVX2 alone, and faster for one
  token at a time on an AVX-512 VNNI Xeon) where ``_int_mm`` is slow or costs a message (its mood read
  and its reply, token by token) clearly more. fbgemm quantizes all tokens of a call with one scale;
  scaling each token to the same range first makes that scale per token again.
* :class:`HybridInt8Linear` (fbgemm for one token, ``_int_mm`` for several) where each kernel is
  clearly faster on its side, as on an AVX-512 VNNI Xeon with AMX.
* :class:`WidePackedInt8Linear` and :class:`WideHybridInt8Linear`, the same with weights in ±127, where
  fbgemm adds its products in int32 (AVX-512 VNNI), checked on the worst case
  (:func:`fbgemm_sums_exactly`).
* float32 weights where neither int8 product beats float32.

The one-token times stream their weights from memory, as a decoding step does (see
``STREAMED_TOKEN_BYTES``).

The token embedding becomes int8 rows with a scale each (:class:`Int8Embedding`).

Plain fbgemm dynamic quantization (one 7-bit scale per call) let tokens with huge activations coarsen
all others, and a message's mood depended on what it was batched with (label KL vs float32 0.071 with
it, 0.003 with per-token int8, measured on 400 dev messages).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import mmap
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

from bot.model.fused_projections import fuse_shared_input_projections

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

#: An int8 layer kind is used only where its matrix product is at most this many times slower than a
#: float32 one. On CPUs without int8 dot-product instructions (AVX2 only, measured on an AMD EPYC)
#: ``torch._int_mm`` ran ~20x slower than float32 (a mood read took 2.3 s instead of 0.28 s), while
#: fbgemm's prepacked int8 product ran ~3x faster than float32.
#: The checks use a quarter of an MLP matrix (1216 columns), with ratios there (38x and 0.7x) as far from
#: the limit as at full size (22x and 0.4x); they took ~0.13 s for both on two threads there (one thread
#: now, see ``_best_times``: expect up to twice that), 0.02-0.1 s on an AVX-512 VNNI Xeon (0.3x and 0.5x).
INT8_SLOWDOWN_LIMIT = 2.0

#: A message costs one mood read (one call with all its tokens) and a reply of about this many tokens,
#: each a call with one token. Where both int8 kinds read fast enough, fbgemm's is used where such a
#: message costs at most ``PACKED_MESSAGE_COST_LIMIT`` of ``torch._int_mm``'s: on an AVX-512 VNNI Xeon
#: (with AMX) ``_int_mm`` was 1.3x faster for 32 tokens but 2.5x slower for one (the check: 0.61-0.76
#: for a message), and replies ran at 13.5 tok/s with it, 20.7 with fbgemm's, mood reads at 110 ms and
#: 129 ms.
#: The margin keeps a CPU where the two are alike from switching kind (and numerics) between starts.
REPLY_TOKENS_PER_MESSAGE = 60
PACKED_MESSAGE_COST_LIMIT = 0.8

#: :class:`HybridInt8Linear` is used where fbgemm runs one token in at most ``KERNEL_MARGIN`` of
#: ``_int_mm``'s time and ``_int_mm`` runs a mood read's call in at most ``READ_PARITY_LIMIT`` of
#: fbgemm's. The check's matrix stays in cache and runs on one thread, which hides most of ``_int_mm``'s
#: lead: on the AVX-512 VNNI Xeon (with AMX) above it gave 0.54-0.72 and 0.79-1.14, while the bundled
#: model (weights read from memory, two threads) read chat messages 1.14x faster with the hybrid,
#: batches of 8 1.19x, 8-token messages alike (0.99x), and replied as fast. With a limit of 1.1, one
#: check in twelve there (1.14) and one benchmark's fresh load chose fbgemm alone, which reads slower
#: and recomputes the stored prefixes (a 10.8 s start instead of 7.5-8.9). The one-token check now
#: streams its weights from memory (``STREAMED_TOKEN_BYTES``): on a 2-core AVX-512 VNNI Xeon without AMX
#: it gave 0.73-0.77 alone and 0.87 during a load (in cache: 0.99-1.02), and fbgemm decoded the bundled
#: model 1.24x faster. The kind is fixed per cache (the start snapshot), so a start does not flip it.
KERNEL_MARGIN = 0.95
READ_PARITY_LIMIT = 1.3

#: Layers with more output rows than this are converted in blocks, on both threads (only the output
#: head of the bundled model: 151,936 rows, against 4,864 for the largest other layer).
ROWS_PER_CONVERSION = 80_000

#: :class:`PackedInt8Linear`'s weights use [-63, 63], so AVX2's int16 pair sums never overflow.
PACKED_WEIGHT_LIMIT = 63

#: The one-token check streams weights of at least this many bytes from memory, as a decoding step does:
#: a matrix that stays in cache hid fbgemm's lead there. On a 2-core AVX-512 VNNI Xeon without AMX, one
#: token through 24 MLP matrices (105 MB) took 27 ms on ``_int_mm`` and 11 ms on fbgemm (3.9 against
#: 9.2 GB/s, the memory reads at 14), while one such matrix in cache took 104 and 102 µs.
STREAMED_TOKEN_BYTES = 96_000_000

#: The streamed matrices are MLP-sized (896 x 4864 for the bundled model; its MLP holds most of the
#: weights): through 896 x 1216 ones the same Xeon gave fbgemm a lead of 1.3x instead of 2.4x.
STREAMED_COLUMNS = 4864

#: The uint8 quantization fbgemm picks for the range [-1, 1]: what :class:`PackedInt8Linear` gives its
#: per-token scaled activations.
UNIT_RANGE_SCALE = 2.0 / 255
UNIT_RANGE_ZERO_POINT = 128


class Int8Embedding(nn.Module):
    """A token embedding kept as int8 rows (each with its own scale) that returns float32 vectors.

    A quarter of a float32 table's memory and half of a float16 one's (136 MB instead of 272 MB for
    the bundled model's 151,936 tokens), so a checkpoint's table can be released after loading.
    """

    #: How the rows are rounded; part of the prefix store's key (see :func:`prepare_for_cpu`).
    numerics: ClassVar[str] = "int8 embedding rows"

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        quantized, scales = _int8_per_channel(weight.detach())
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("weight_scale", scales)

    @property
    def weight(self) -> torch.Tensor:  # some library code reads .weight.dtype/.shape
        return self.weight_int8

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(input_ids, self.weight_int8).float()
        return rows.mul_(self.weight_scale[input_ids].unsqueeze(-1))


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per output channel) and int8 activations (per token).

    Each token's input vector is quantized with its own scale, so a token's result never depends on the
    other tokens in the call (a mood read is the same alone or batched), and one token with huge
    activations does not coarsen the others. The int8 product accumulates exactly in int32
    (``torch._int_mm``), then one float multiply restores the scales.
    """

    #: How the numbers are rounded; part of the prefix store's key, so change it with the arithmetic.
    numerics: ClassVar[str] = "weights in ±127, 8-bit activations per token"

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_per_chunk: int = 8192) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        quantized, scales = _int8_per_channel(weight, rows_per_chunk)
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("weight_scale", scales)
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features)
        output = _int_mm_per_token(flat, self.weight_int8, self.weight_scale)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class PackedInt8Linear(nn.Module):
    """A linear layer on fbgemm's prepacked int8 kernels, with per-token activation scales.

    fbgemm quantizes a whole call's input with one range. Each token is first divided by its own
    largest magnitude, and the call quantizes with the fixed range [-1, 1] whatever else is in the
    batch: the quantization is per token, and a mood read is the same alone or batched. The token
    scales are multiplied back afterwards. (The same numbers, bit for bit, as fbgemm's dynamic linear
    with a +1/-1 row appended to pin its range, without that copy and range scan: 13% faster for one
    32-token layer on an AVX-512 VNNI Xeon, within noise for a whole mood read there.)

    Activations get all 8 bits and weights 7 (±63): AVX2's int8 product adds pairs of uint8 x int8
    products in int16, which 8-bit weights beside 8-bit activations can overflow (fbgemm's usual answer,
    ``reduce_range``, takes the bit from the activations instead). Measured on all 2000 TweetEval dev
    tweets: macro-recall 0.623 with 7-bit activations, 0.633 with 8-bit ones, as with ``Int8Linear``.
    """

    #: How the numbers are rounded; part of the prefix store's key, so change it with the arithmetic.
    numerics: ClassVar[str] = f"weights in ±{PACKED_WEIGHT_LIMIT}, 8-bit activations per token"
    #: The weights' range: [-weight_limit, weight_limit].
    weight_limit: ClassVar[int] = PACKED_WEIGHT_LIMIT

    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        quantized, scales = _int8_per_channel(weight, limit=self.weight_limit)
        self._packed_params = _prepack(quantized, scales)  # fbgemm's own copy
        self._unpacked = None
        self._packing = threading.Lock()
        self._keep_int8_weights(quantized, scales)
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else None)

    def _keep_int8_weights(self, quantized: torch.Tensor, scales: torch.Tensor) -> None:
        """Nothing to keep: fbgemm has its own copy of the weights."""

    def _forget_unpacked(self, quantized: torch.Tensor) -> None:
        """Hand back the pages of the int8 weights just packed (read from the start snapshot's mapping).

        Nothing reads them again; their pages stayed resident otherwise (the bundled model's output
        head: 136 MB of RSS).
        """
        forget_pages(quantized)

    _packed_params: Any  # fbgemm's packed weights (a torch ScriptObject), None until packed
    _unpacked: tuple[torch.Tensor, torch.Tensor] | None  # what to pack after unpickling

    @property
    def _packed(self) -> Any:
        """fbgemm's packed weights; after unpickling, packed on first use (or by :meth:`pack`)."""
        packed = self._packed_params
        if packed is None:
            with self._packing:
                if self._packed_params is None:
                    assert self._unpacked is not None
                    quantized, scales = self._unpacked
                    self._packed_params = _prepack(quantized, scales)
                    self._unpacked = None
                    self._forget_unpacked(quantized)
                packed = self._packed_params
        return packed

    def pack(self) -> None:
        """Pack the weights now if they are not yet (a start from the snapshot packs in the background)."""
        self._packed  # noqa: B018

    def one_token_weights(self) -> Any:
        """fbgemm's packed weights (packed now if not yet), for :func:`fbgemm_one_token`: the product
        :meth:`forward` runs for one token, before the bias."""
        return self._packed

    def __getstate__(self) -> dict[str, object]:
        """Picklable: the int8 weights and their scales instead of fbgemm's packed object."""
        state = dict(self.__dict__)
        state.pop("_packing", None)
        if state.pop("_packed_params") is not None:
            state["_unpacked"] = self._int8_weights()
        state["_packed_params"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._packing = threading.Lock()

    def _int8_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weights and float32 row scales fbgemm packed."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features)
        output = self._one_token(flat) if flat.shape[0] == 1 else self._several_tokens(flat)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*hidden.shape[:-1], self.out_features)

    def _one_token(self, flat: torch.Tensor) -> torch.Tensor:
        """A decoding step's product: fbgemm's dynamic range is already this token's own."""
        return fbgemm_one_token(flat, self._packed)

    def _several_tokens(self, flat: torch.Tensor) -> torch.Tensor:
        scale = flat.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
        return fbgemm_unit_range(flat / scale, self._packed).mul_(scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm)"


class WidePackedInt8Linear(PackedInt8Linear):
    """:class:`PackedInt8Linear` with weights in ±127, for CPUs where fbgemm sums products in int32.

    With AVX-512 VNNI (or AVX-VNNI) fbgemm multiplies and adds uint8 x int8 products straight into int32
    (``vpdpbusd``), so the AVX2 pair sums that cost the weights a bit never occur;
    :func:`fbgemm_sums_exactly` checks it on the worst case before this kind is chosen.
    """

    numerics: ClassVar[str] = "weights in ±127, 8-bit activations per token (fbgemm)"
    weight_limit: ClassVar[int] = 127


class HybridInt8Linear(PackedInt8Linear):
    """:class:`PackedInt8Linear` for one token at a time, ``torch._int_mm`` for several.

    For CPUs where each kernel wins one side. On a 2-core AVX-512 VNNI Xeon with AMX, through an MLP
    matrix (896 x 4864, two threads) fbgemm ran one token in 205 µs against ``_int_mm``'s 380; cycling
    through 24 such matrices, as a forward pass does, ``_int_mm`` ran 32 tokens in 689 µs against
    fbgemm's 897 and 25 in 658 against 758 (8 tokens: 552 against 501). Mood reads and prompts run
    several tokens per call, decoding steps one. Both use the same ±63 weights (quantized once); the
    price is a second int8 copy of them (fbgemm packs its own), about 360 MB for the bundled model.
    Several tokens get 8-bit activations per token, as in :class:`Int8Linear`.
    """

    numerics: ClassVar[str] = (
        f"weights in ±{PACKED_WEIGHT_LIMIT}, 8-bit activations per token; torch._int_mm for several tokens"
    )

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def _keep_int8_weights(self, quantized: torch.Tensor, scales: torch.Tensor) -> None:
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("weight_scale", scales)

    def _int8_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_int8, self.weight_scale  # the same numbers; saved once with the buffers

    def _forget_unpacked(self, quantized: torch.Tensor) -> None:
        """Nothing to forget: ``_int_mm`` reads these weights for several tokens."""

    def _several_tokens(self, flat: torch.Tensor) -> torch.Tensor:
        return _int_mm_per_token(flat, self.weight_int8, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm + _int_mm)"


class WideHybridInt8Linear(HybridInt8Linear):
    """:class:`HybridInt8Linear` with weights in ±127, where fbgemm sums products in int32.

    Several tokens then run exactly :class:`Int8Linear`'s numbers (so mood reads, stored prefixes and
    learned readouts are those of ``_int_mm`` alone) and decoding steps run on fbgemm.
    """

    numerics: ClassVar[str] = "weights in ±127, 8-bit activations per token; fbgemm for one token"
    weight_limit: ClassVar[int] = 127


#: The output head's kind beside each hybrid kind: it only ever runs one position, so fbgemm alone.
HYBRID_HEAD_KINDS: dict[type[Int8Linear] | type[PackedInt8Linear], type[PackedInt8Linear]] = {
    HybridInt8Linear: PackedInt8Linear,
    WideHybridInt8Linear: WidePackedInt8Linear,
}

#: Each fbgemm kind and its ±127 twin, for CPUs where fbgemm sums in int32 (see :func:`_widened`).
WIDE_KINDS: dict[type[PackedInt8Linear], type[PackedInt8Linear]] = {
    PackedInt8Linear: WidePackedInt8Linear,
    HybridInt8Linear: WideHybridInt8Linear,
}


class RowBlocks(nn.Module):
    """A linear layer converted in blocks of output rows, each its own layer; outputs are joined.

    Each block runs the same numbers as the whole would (both int8 kinds quantize rows and tokens on
    their own), so a large layer can be converted on two threads at once.
    """

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(hidden) for block in self.blocks], dim=-1)


def fbgemm_one_token(token: torch.Tensor, packed: Any) -> torch.Tensor:
    """``token [1, in] @ weight.T`` on fbgemm's ``packed`` weights, the input quantized by its own range.

    Torch-function dispatch is off for the call: looking for ``__torch_function__`` on the packed
    weights (a ScriptObject) raises and catches an AttributeError every call, 25-37 µs of a 4864 x 896
    product's 300 (an AMD EPYC; 122 such calls make a decoding step of the bundled model).
    """
    with torch._C.DisableTorchFunctionSubclass():
        output: torch.Tensor = torch.ops.quantized.linear_dynamic(token, packed, False)
    return output


def fbgemm_unit_range(flat: torch.Tensor, packed: Any) -> torch.Tensor:
    """``flat @ weight.T`` on fbgemm's ``packed`` weights, the input quantized on the fixed range [-1, 1]
    (torch-function dispatch off, as in :func:`fbgemm_one_token`)."""
    with torch._C.DisableTorchFunctionSubclass():
        output: torch.Tensor = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            flat, UNIT_RANGE_SCALE, UNIT_RANGE_ZERO_POINT, packed
        )
    return output


def _prepack(quantized: torch.Tensor, scales: torch.Tensor) -> Any:
    """fbgemm's packed form of int8 weights with per-row ``scales``."""
    with warnings.catch_warnings():  # torch marks quantized-tensor creation deprecated; fbgemm needs it
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(
            quantized, scales.double(), torch.zeros(quantized.shape[0], dtype=torch.long), 0
        )
    return torch.ops.quantized.linear_prepack(qweight, None)


def _int_mm_per_token(
    flat: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor
) -> torch.Tensor:
    """``flat [tokens, in] @ weight.T``, each token rounded to int8 by its own scale (``torch._int_mm``)."""
    scale = flat.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    quantized = torch.round(flat / scale).to(torch.int8)
    return torch._int_mm(quantized, weight_int8.t()).float().mul_(scale).mul_(weight_scale)


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


def _best_times(
    products: list[Callable[[], object]], repeats: int, *, threads: int = 1
) -> list[float]:
    """The best time of each of ``products`` over ``repeats`` rounds, after a warm-up round.

    The products run in turn (so a busy moment slows all of them) on ``threads`` (one for the checks
    that are bound by a core, the model's for those bound by memory): with two, every
    product waits for the slower thread, and another process on one core made the int8 products look up
    to 15x slower than float32 in 2 of 8 checks here (a CPU where they are 3x faster), which sent a load
    to float32.
    """
    model_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = [float("inf")] * len(products)
    try:
        for product in products:  # warm-up
            product()
        for _ in range(repeats):
            for index, product in enumerate(products):
                started = time.perf_counter()
                product()
                best[index] = min(best[index], time.perf_counter() - started)
    finally:
        torch.set_num_threads(model_threads)
    return [max(seconds, 1e-9) for seconds in best]


def _slowdown(candidate: Callable[[], object], reference: Callable[[], object], repeats: int) -> float:
    """How many times slower ``candidate`` runs than ``reference``, best run against best run."""
    candidate_seconds, reference_seconds = _best_times([candidate, reference], repeats)
    return candidate_seconds / reference_seconds


def int8_slowdown(rows: int = 32, inner: int = 896, columns: int = 1216, repeats: int = 3) -> float:
    """How many times slower an int8 matrix product (``torch._int_mm``) is than float32 on this CPU."""
    left = torch.randint(-127, 128, (rows, inner), dtype=torch.int8)
    right = torch.randint(-127, 128, (inner, columns), dtype=torch.int8)
    left_float, right_float = left.float(), right.float()
    return _slowdown(lambda: torch._int_mm(left, right), lambda: left_float @ right_float, repeats)


def _packed_check_layer(inner: int, columns: int) -> tuple[torch.Tensor, PackedInt8Linear] | None:
    """A random weight of the checks' shape and its :class:`PackedInt8Linear` (None without fbgemm)."""
    weight = torch.randn(columns, inner) / inner**0.5
    try:
        return weight, PackedInt8Linear(weight, None)
    except RuntimeError:  # no fbgemm in this torch build
        return None


def packed_int8_slowdown(rows: int = 32, inner: int = 896, columns: int = 1216, repeats: int = 3) -> float:
    """How many times slower a :class:`PackedInt8Linear` is than a float32 linear layer on this CPU."""
    layer = _packed_check_layer(inner, columns)
    if layer is None:
        return float("inf")
    weight, packed = layer
    hidden = torch.randn(rows, inner)
    return _slowdown(lambda: packed(hidden), lambda: nn.functional.linear(hidden, weight), repeats)


class KernelTimes(NamedTuple):
    """Best seconds of fbgemm's kernel (packed) and ``_int_mm``: a mood read's call, a streamed token."""

    packed_read: float
    int_mm_read: float
    packed_token: float
    int_mm_token: float

    def packed_message_cost_ratio(self) -> float:
        """What a message costs on fbgemm's kernel as a share of ``_int_mm``'s.

        A message is one mood read (32 tokens in one call) and a reply of ``REPLY_TOKENS_PER_MESSAGE``
        one-token steps.
        """
        packed_cost = self.packed_read + REPLY_TOKENS_PER_MESSAGE * self.packed_token
        return packed_cost / (self.int_mm_read + REPLY_TOKENS_PER_MESSAGE * self.int_mm_token)


def int8_kernel_times(inner: int = 896, columns: int = 1216, repeats: int = 3) -> KernelTimes | None:
    """Both int8 kernels timed for 32 tokens (one matrix) and for one token (streamed), in turn.

    None without fbgemm. The one-token times run through ``STREAMED_TOKEN_BYTES`` of weights (see
    :func:`streamed_token_times`); the 32-token times are compute-bound, so one matrix serves.
    """
    layer = _packed_check_layer(inner, columns)
    if layer is None:
        return None
    weight, packed = layer
    exact = Int8Linear(weight, None)
    batch = torch.randn(32, inner)
    packed_read, int_mm_read = _best_times([lambda: packed(batch), lambda: exact(batch)], repeats)
    packed_token, int_mm_token = streamed_token_times(inner, STREAMED_COLUMNS, repeats)
    return KernelTimes(packed_read, int_mm_read, packed_token, int_mm_token)


def streamed_token_times(
    inner: int = 896, columns: int = STREAMED_COLUMNS, repeats: int = 3, total_bytes: int | None = None
) -> tuple[float, float]:
    """Seconds of one token through many ``[columns, inner]`` int8 matrices: fbgemm's, ``_int_mm``'s.

    The matrices add up to ``total_bytes`` (default ``STREAMED_TOKEN_BYTES``) per kernel, more than a
    CPU's caches hold, so each token reads its weights from memory as a decoding step does. Both kernels
    get the same random int8 weights; the best of ``repeats`` rounds counts, on the model's threads as in
    decoding (bound by memory, not by a core another process may share: on one thread the 2-core Xeon
    above gave 13 against 17 ms, on two 11 against 27).
    """
    count = max(1, (STREAMED_TOKEN_BYTES if total_bytes is None else total_bytes) // (inner * columns))
    weights = [torch.randint(-127, 128, (columns, inner), dtype=torch.int8) for _ in range(count)]
    scales = torch.full((columns,), 1e-3)
    packed = [_prepack(weight, scales) for weight in weights]
    token = torch.randn(1, inner)

    def through_packed() -> None:
        for matrix in packed:
            fbgemm_one_token(token, matrix)

    def through_int_mm() -> None:
        for matrix in weights:
            _int_mm_per_token(token, matrix, scales)

    packed_seconds, int_mm_seconds = _best_times(
        [through_packed, through_int_mm], repeats, threads=torch.get_num_threads()
    )
    return packed_seconds, int_mm_seconds


def fbgemm_sums_exactly(inner: int = 256) -> bool:
    """Whether fbgemm's int8 product is exact for ±127 weights (int32 sums, no int16 pair saturation).

    The worst case: every activation quantizes to 255 and every weight is 127, whose pair sums
    (2 x 255 x 127) overflow int16 where fbgemm adds products in pairs (AVX2 without VNNI).
    """
    try:
        packed = _prepack(torch.full((8, inner), 127, dtype=torch.int8), torch.ones(8))
    except RuntimeError:
        return False
    one_token = fbgemm_one_token(torch.ones(1, inner), packed)
    # 1.0 quantizes to 255 on the fixed range [-1, 1] too: the several-token path's worst case
    several = fbgemm_unit_range(torch.ones(3, inner), packed)
    expected = 127.0 * inner
    return all(
        bool(torch.allclose(output, torch.full_like(output, expected), rtol=1e-2))
        for output in (one_token, several)
    )


def kind_for_kernel_times(times: KernelTimes) -> type[Int8Linear] | type[PackedInt8Linear]:
    """The int8 layer kind for a CPU where both kernels are fast enough (see ``choose_int8_layer``)."""
    if (
        times.packed_token < KERNEL_MARGIN * times.int_mm_token
        and times.int_mm_read <= READ_PARITY_LIMIT * times.packed_read
    ):
        logger.info(
            "fbgemm runs one token %.2fx faster than torch._int_mm on this CPU, which reads 32 tokens "
            "%.2fx as fast: using fbgemm for decoding steps and _int_mm for several tokens",
            times.int_mm_token / times.packed_token,
            times.packed_read / times.int_mm_read,
        )
        return HybridInt8Linear
    ratio = times.packed_message_cost_ratio()
    if ratio > PACKED_MESSAGE_COST_LIMIT:
        return Int8Linear
    logger.info(
        "fbgemm's int8 kernels cost a message %.2fx what torch._int_mm does on this CPU (faster for "
        "one token at a time): using them",
        ratio,
    )
    return PackedInt8Linear


def choose_int8_layer() -> type[Int8Linear] | type[PackedInt8Linear] | None:
    """The int8 layer kind that is fast on this CPU, or None where float32 is faster than both.

    Where both kernels read moods fast enough, fbgemm is clearly faster for one token and ``_int_mm``
    about as fast for several, :class:`HybridInt8Linear` runs each on its side (see
    ``READ_PARITY_LIMIT``); otherwise the one a whole message (its read and its reply) costs clearly
    less on wins.
    """
    slowdown = int8_slowdown()
    packed_slowdown = packed_int8_slowdown()
    if slowdown <= INT8_SLOWDOWN_LIMIT and packed_slowdown <= INT8_SLOWDOWN_LIMIT:
        times = int8_kernel_times()
        if times is not None:
            logger.info("int8 kernel check (seconds): %s", times)
            return _widened(kind_for_kernel_times(times))
    if slowdown <= INT8_SLOWDOWN_LIMIT:
        return Int8Linear
    if packed_slowdown <= INT8_SLOWDOWN_LIMIT:
        logger.info(
            "int8 products (_int_mm) are %.0fx slower than float32 on this CPU: using fbgemm's int8 "
            "kernels (%.1fx the float32 time)",
            slowdown,
            packed_slowdown,
        )
        return _widened(PackedInt8Linear)
    logger.warning(
        "int8 matrix products are %.0fx slower than float32 on this CPU: running float32 weights "
        "(faster here, about twice the memory)",
        min(slowdown, packed_slowdown),
    )
    return None


def _widened(kind: type[Int8Linear] | type[PackedInt8Linear]) -> type[Int8Linear] | type[PackedInt8Linear]:
    """The ±127 twin of an fbgemm kind (``WIDE_KINDS``) where fbgemm sums in int32, else ``kind``."""
    wide = WIDE_KINDS.get(kind) if issubclass(kind, PackedInt8Linear) else None
    if wide is not None and fbgemm_sums_exactly():
        return wide
    return kind


def prepare_for_cpu(model: PreTrainedModel, *, quantize: bool, progress: bool = False) -> str:
    """Make ``model`` run fast on CPU: int8 linear layers when ``quantize``, else float32.

    The int8 layer kind is the one fast on this CPU (see :func:`choose_int8_layer`); where none is,
    the model runs float32 weights. With int8 layers, attention's query, key and value layers also
    become one (see :mod:`bot.model.fused_projections`) and the token embedding becomes int8 rows;
    float32 keeps the layers transformers built. Returns what the weights now are: "float32" or the
    int8 layer kind's name and numerics, and the embedding's (part of the prefix store's key). With
    ``progress`` a progress bar counts the layers converted.
    """
    layer_kind = choose_int8_layer() if quantize else None
    if layer_kind is None:
        model.float()
        release_free_memory()
        return "float32"
    _small_parameters_to_float(model)
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    model.set_input_embeddings(Int8Embedding(weight))
    fuse_shared_input_projections(model)
    _convert_linears(model, layer_kind, progress=progress)
    gc.collect()
    release_free_memory()
    return f"{layer_kind.__name__} ({layer_kind.numerics}; {Int8Embedding.numerics})"


def _convert_linears(
    model: PreTrainedModel, layer_kind: type[Int8Linear] | type[PackedInt8Linear], *, progress: bool = False
) -> None:
    """Replace every ``nn.Linear`` of ``model`` by ``layer_kind`` (in :class:`RowBlocks` when large).

    With :class:`HybridInt8Linear` the output head becomes a :class:`PackedInt8Linear`: it only ever
    computes one position's logits (a reply's next token; mood reads use their label rows), so a second
    int8 copy of it (136 MB for the bundled model) would buy nothing.
    """
    head = model.get_output_embeddings()
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    kinds = {
        name: _packed_twin(layer_kind) if linear is head else layer_kind
        for name, linear in linears.items()
    }
    # Blocks of rows, the largest first. fbgemm packed the output head (151,936 rows) in ~1.9 s on one
    # core of an AVX2 machine, after the other core had run out of layers; two halves packed side by
    # side in 0.83 s there.
    tasks = [
        (name, rows)
        for name, linear in linears.items()
        for rows in _row_blocks(linear.out_features, ROWS_PER_CONVERSION)
    ]
    tasks.sort(key=lambda task: (task[1].stop - task[1].start) * linears[task[0]].in_features, reverse=True)

    def convert(task: tuple[str, slice]) -> nn.Module:
        linear = linears[task[0]]
        bias = linear.bias.detach()[task[1]] if linear.bias is not None else None
        return kinds[task[0]](linear.weight.detach()[task[1]], bias)

    # Two blocks at a time: fbgemm's weight packing runs on one core (and releases the GIL), so two
    # blocks pack at once.
    converted: dict[str, list[tuple[int, nn.Module]]] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="quantizing to int8", unit="layer", disable=not progress, leave=False)
    with bar, ThreadPoolExecutor(max_workers=2) as pool:
        for (name, rows), block in zip(tasks, pool.map(convert, tasks), strict=True):
            converted.setdefault(name, []).append((rows.start, block))
            bar.update()
    for name, blocks in converted.items():
        blocks.sort(key=lambda start_and_block: start_and_block[0])
        _set_submodule(model, name, blocks[0][1] if len(blocks) == 1 else RowBlocks([b for _, b in blocks]))


def _packed_twin(
    layer_kind: type[Int8Linear] | type[PackedInt8Linear],
) -> type[Int8Linear] | type[PackedInt8Linear]:
    """The output head's kind: fbgemm alone (same weights) for a hybrid kind, else ``layer_kind``."""
    return HYBRID_HEAD_KINDS.get(layer_kind, layer_kind)


def _row_blocks(rows: int, largest: int) -> list[slice]:
    """``rows`` cut into the fewest blocks of at most ``largest`` rows, all but the last of one size."""
    count = -(-rows // largest)
    size = -(-rows // count)
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def _small_parameters_to_float(model: PreTrainedModel) -> None:
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


def forget_pages(tensor: torch.Tensor) -> None:
    """Tell the kernel the whole memory pages inside ``tensor`` are not needed (``MADV_DONTNEED``).

    Only for a tensor nothing reads again: pages of a file mapping are dropped (and would be read from
    the file again), anonymous ones would read as zeros.
    """
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, inflating RSS after loading)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
