"""CPU weights: the int8 layer kinds stay close to float32, and a token's result ignores its neighbours."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bot.model import cpu_weights  # noqa: E402
from bot.model.base import ChatTurn  # noqa: E402
from bot.model.transformers_model import TransformersModel  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402

nn_embedding = torch.nn.functional.embedding

#: The real check, kept before the autouse fixture below replaces it in every test.
_fbgemm_sums_exactly_here = cpu_weights.fbgemm_sums_exactly


#: Kernel timings (read of 32 tokens, one token; fbgemm's and _int_mm's) that choose each int8 kind.
KERNEL_TIMES_FOR = {
    cpu_weights.Int8Linear: cpu_weights.KernelTimes(4.0, 2.0, 3.0, 1.0),  # _int_mm faster at both
    cpu_weights.PackedInt8Linear: cpu_weights.KernelTimes(2.0, 4.0, 1.0, 3.0),  # fbgemm faster at both
    cpu_weights.HybridInt8Linear: cpu_weights.KernelTimes(4.0, 2.0, 1.0, 3.0),  # each faster on a side
}


@pytest.fixture(autouse=True)
def _narrow_fbgemm_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kinds as chosen on an AVX2 CPU; the ±127 twins (VNNI) have their own tests below."""
    monkeypatch.setattr(cpu_weights, "fbgemm_sums_exactly", lambda: False)


def _weight_and_bias(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """A small random layer's weight [40, 64] and bias, and the generator to draw its tokens from."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(40, 64, generator=generator) * 0.1, torch.randn(40, generator=generator), generator


def _relative_error(output: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per token: squared error relative to the exact output's power."""
    return (output - exact).pow(2).mean(dim=-1) / exact.pow(2).mean(dim=-1)


@pytest.mark.parametrize(
    ("layer_kind", "tolerance"),
    [
        (cpu_weights.Int8Linear, 1e-3),
        (cpu_weights.PackedInt8Linear, 3e-3),
        (cpu_weights.HybridInt8Linear, 3e-3),
        (cpu_weights.WidePackedInt8Linear, 1e-3),
        (cpu_weights.WideHybridInt8Linear, 1e-3),
    ],
)
def test_int8_layers_are_close_to_float_and_independent_of_other_tokens(
    layer_kind: type[torch.nn.Module], tolerance: float
) -> None:
    if getattr(layer_kind, "weight_limit", 0) == 127 and not _fbgemm_sums_exactly_here():
        pytest.skip("fbgemm adds products in int16 pairs on this CPU (no VNNI): ±127 kinds are not chosen")
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(48, 40, generator=generator) * 0.1
    bias = torch.randn(48, generator=generator)
    layer = layer_kind(weight.half(), bias)
    tokens = torch.randn(2, 5, 40, generator=generator)
    tokens[1, 3] *= 500.0  # one token with huge activations
    exact = tokens @ weight.half().float().T + bias
    output = layer(tokens)
    assert output.shape == (2, 5, 48)
    assert _relative_error(output, exact).max() < tolerance
    assert torch.allclose(layer(tokens[0, :2]), output[0, :2], atol=1e-5)  # alone == batched
    assert torch.allclose(layer(tokens[1, 1:4]), output[1, 1:4], atol=1e-5)  # beside the huge token too
    assert _relative_error(layer(tokens[1, 2]), exact[1, 2]) < tolerance  # a bare vector (one token) works
    positive = tokens[0].abs()  # tokens whose values are all positive, alone and beside a negative one
    assert torch.allclose(layer(positive), layer(torch.cat([positive, -positive[:1]]))[:-1], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_per_channel_int8_rounds_each_row_by_its_largest_magnitude_and_leaves_the_weight_alone(
    dtype: torch.dtype,
) -> None:
    generator = torch.Generator().manual_seed(9)
    weight = (torch.randn(21, 16, generator=generator) * 0.1).to(dtype)
    weight[4] = 0.0  # an all-zero row must not divide by zero
    original = weight.clone()
    quantized, scales = cpu_weights._int8_per_channel(weight, rows_per_chunk=8, limit=63)
    expected_scales = weight.float().abs().amax(dim=1).clamp_min(1e-8) / 63
    assert torch.equal(weight, original)  # a float32 checkpoint is quantized from a copy, never in place
    assert torch.equal(scales, expected_scales)
    assert torch.equal(quantized, torch.round(weight.float() / expected_scales[:, None]).to(torch.int8))
    assert quantized.abs().amax(dim=1).tolist() == [0 if row == 4 else 63 for row in range(21)]


def test_packed_int8_does_not_overflow_when_every_product_is_at_its_largest() -> None:
    """8-bit activations beside 8-bit weights would overflow AVX2's int16 pair sums here."""
    weight = torch.full((8, 64), 0.5)
    tokens = torch.full((3, 64), 2.0)
    layer = cpu_weights.PackedInt8Linear(weight, None)
    exact = torch.full((3, 8), 64.0)
    assert _relative_error(layer(tokens), exact).max() < 1e-4  # several tokens (the range-row path)
    assert _relative_error(layer(tokens[0]), exact[0]) < 1e-4  # one token (the decoding path)


def test_per_token_int8_beats_one_scale_per_call_when_one_token_is_huge() -> None:
    """The reason for Int8Linear: torch's dynamic int8 layer shares one activation scale per call."""
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(64, 96, generator=generator) * 0.05
    tokens = torch.randn(16, 96, generator=generator)
    tokens[0] *= 300.0  # an "attention sink"-like first token
    exact = tokens @ weight.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared = DynamicLinear(96, 64, dtype=torch.qint8)
        shared.set_weight_bias(torch.quantize_per_tensor(weight, 0.05 / 127 * 4, 0, torch.qint8), None)
        shared_error = _relative_error(shared(tokens), exact)[1:].mean()
    for layer_kind in (cpu_weights.Int8Linear, cpu_weights.PackedInt8Linear, cpu_weights.HybridInt8Linear):
        per_token_error = _relative_error(layer_kind(weight, None)(tokens), exact)[1:].mean()
        assert per_token_error < shared_error / 10, layer_kind


@pytest.mark.parametrize(
    ("int_mm_slowdown", "layer_kind"),
    [
        (0.3, cpu_weights.Int8Linear),
        (0.3, cpu_weights.PackedInt8Linear),
        (0.3, cpu_weights.HybridInt8Linear),
        (20.0, cpu_weights.PackedInt8Linear),
    ],
    ids=[
        "fast-int8-products",
        "fast-int8-products-slow-for-one-token",
        "kernels-faster-on-a-side",
        "avx2-only",
    ],
)
def test_quantized_tiny_model_matches_float_and_batches_exactly(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    int_mm_slowdown: float,
    layer_kind: type[torch.nn.Module],
) -> None:
    monkeypatch.setattr(cpu_weights, "int8_slowdown", lambda: int_mm_slowdown)
    monkeypatch.setattr(cpu_weights, "packed_int8_slowdown", lambda: 0.4)
    monkeypatch.setattr(cpu_weights, "int8_kernel_times", lambda: KERNEL_TIMES_FOR[layer_kind])
    directory = build_tiny_model(tmp_path / "m", dtype="float16")
    exact = TransformersModel.load(directory, name="tiny", quantize=False, threads=1)
    quantized = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    assert any(type(module) is layer_kind for module in quantized.decoder.model.modules())
    assert isinstance(quantized.decoder.model.get_input_embeddings(), cpu_weights.Int8Embedding)
    assert quantized.weights.startswith(layer_kind.__name__) and exact.weights == "float32"
    assert not any(isinstance(module, torch.nn.Linear) for module in quantized.decoder.model.modules())
    texts = ["I am happy today", "我很难过", "What time is it? " * 4]
    batched = quantized.mood_log_probs(texts)
    assert (exact.mood_log_probs(texts).exp() - batched.exp()).abs().max() < 0.02
    for index, text in enumerate(texts):
        assert torch.allclose(quantized.mood_log_probs([text])[0], batched[index], atol=1e-4)
    # Decoding steps send one token at a time through the int8 layers (their own path in PackedInt8Linear).
    reply = quantized.generate("Be kind.", [ChatTurn(role="user", content="hello")], max_new_tokens=4)
    assert isinstance(reply, str)


def test_a_cpu_with_slow_int8_products_runs_float32_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cpu_weights, "int8_slowdown", lambda: 20.0)
    monkeypatch.setattr(cpu_weights, "packed_int8_slowdown", lambda: 5.0)
    directory = build_tiny_model(tmp_path / "m", dtype="float16")
    model = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    assert not any(
        isinstance(module, (cpu_weights.Int8Linear, cpu_weights.PackedInt8Linear))
        for module in model.decoder.model.modules()
    )
    assert all(parameter.dtype == torch.float32 for parameter in model.decoder.model.parameters())
    assert "slower than float32" in caplog.text
    assert model.weights == "float32"  # what the benchmark prints beside its figures
    assert model.classify(["I am happy today"])[0].label is not None


def test_int8_slowdowns_and_kernel_times_are_positive() -> None:
    assert cpu_weights.int8_slowdown(rows=4, inner=64, columns=64, repeats=1) > 0
    assert cpu_weights.packed_int8_slowdown(rows=4, inner=64, columns=64, repeats=1) > 0
    times = cpu_weights.int8_kernel_times(inner=64, columns=64, repeats=1)
    assert times is not None and min(times) > 0


def test_kernel_times_are_a_read_and_a_streamed_token_on_each_kernel_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu_weights, "_best_times", lambda products, repeats, threads=1: [4.0, 2.0])
    monkeypatch.setattr(
        cpu_weights, "streamed_token_times", lambda inner, columns, repeats: (1.0, 3.0)
    )
    assert cpu_weights.int8_kernel_times() == cpu_weights.KernelTimes(4.0, 2.0, 1.0, 3.0)


def test_a_message_costs_one_batched_read_and_a_reply_a_token_at_a_time() -> None:
    """Packed: 4 ms a read, 1 ms a token; Int8Linear: 2 ms a read, 3 ms a token (60 reply tokens)."""
    assert cpu_weights.REPLY_TOKENS_PER_MESSAGE == 60
    times = cpu_weights.KernelTimes(packed_read=4.0, int_mm_read=2.0, packed_token=1.0, int_mm_token=3.0)
    assert times.packed_message_cost_ratio() == pytest.approx((4 + 60 * 1) / (2 + 60 * 3))


@pytest.mark.parametrize(
    ("times", "layer_kind"),
    [
        *((times, kind) for kind, times in KERNEL_TIMES_FOR.items()),
        # _int_mm as fast for reads (the check hides its lead on real weights): the hybrid
        (cpu_weights.KernelTimes(4.0, 4.2, 1.0, 3.0), cpu_weights.HybridInt8Linear),
        (cpu_weights.KernelTimes(4.0, 4.8, 1.0, 3.0), cpu_weights.HybridInt8Linear),
        # _int_mm clearly slower for reads: fbgemm alone, no second copy of the weights
        (cpu_weights.KernelTimes(2.0, 3.0, 1.0, 3.0), cpu_weights.PackedInt8Linear),
        # fbgemm only a little faster for one token
        (cpu_weights.KernelTimes(4.0, 2.0, 2.9, 3.0), cpu_weights.Int8Linear),
    ],
)
def test_kernel_times_choose_the_int8_kind(
    times: cpu_weights.KernelTimes, layer_kind: type[torch.nn.Module]
) -> None:
    assert cpu_weights.kind_for_kernel_times(times) is layer_kind


def test_kernel_checks_run_the_two_products_in_turn_on_one_thread_and_restore_the_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In turn, so a busy moment slows both; on one thread, so no product waits for a descheduled thread."""
    clock = iter(range(1000))
    monkeypatch.setattr(cpu_weights.time, "perf_counter", lambda: float(next(clock)))
    seen: list[tuple[str, int]] = []
    durations = {"int8": iter([9, 4, 6]), "float": iter([2, 1, 3])}

    def product(kind: str) -> None:
        seen.append((kind, torch.get_num_threads()))
        if len(seen) > 2:  # after the warm-up, each run takes its planned number of clock ticks
            for _ in range(next(durations[kind]) - 1):
                next(clock)

    threads = torch.get_num_threads()
    ratio = cpu_weights._slowdown(lambda: product("int8"), lambda: product("float"), repeats=3)
    assert [kind for kind, _ in seen] == ["int8", "float"] * 4  # warm-up, then three rounds in turn
    assert {count for _, count in seen} == {1}
    assert torch.get_num_threads() == threads
    assert ratio == 4.0  # best against best: 4 ticks against 1


@pytest.mark.parametrize("layer_kind", list(KERNEL_TIMES_FOR), ids=lambda kind: kind.__name__)
def test_layers_converted_in_row_blocks_compute_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer_kind: type[torch.nn.Module]
) -> None:
    """Large layers (the bundled model's output head) are converted in blocks on both threads."""
    monkeypatch.setattr(cpu_weights, "int8_slowdown", lambda: 0.3)
    monkeypatch.setattr(cpu_weights, "packed_int8_slowdown", lambda: 0.4)
    monkeypatch.setattr(cpu_weights, "int8_kernel_times", lambda: KERNEL_TIMES_FOR[layer_kind])
    directory = build_tiny_model(tmp_path / "m", dtype="float16")
    whole = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    monkeypatch.setattr(cpu_weights, "ROWS_PER_CONVERSION", 7)
    blocks = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    assert isinstance(blocks.decoder.model.get_output_embeddings(), cpu_weights.RowBlocks)
    assert not isinstance(whole.decoder.model.get_output_embeddings(), cpu_weights.RowBlocks)
    texts = ["I am happy today", "我很难过"]
    assert torch.allclose(whole.mood_log_probs(texts), blocks.mood_log_probs(texts), atol=1e-6)
    with torch.inference_mode():
        for ids in ([[5, 17, 3, 99]], [[42]]):  # several tokens, and one (a decoding step)
            expected = whole.decoder.model(input_ids=torch.tensor(ids)).logits
            assert torch.allclose(
                blocks.decoder.model(input_ids=torch.tensor(ids)).logits, expected, atol=1e-5
            )


def test_packed_int8_quantizes_scaled_tokens_as_fbgemm_does_for_the_range_minus_one_to_one() -> None:
    """The fixed quantization equals fbgemm's own dynamic one when a +1/-1 row pins its range."""
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(40, 64, generator=generator) * 0.1
    layer = cpu_weights.PackedInt8Linear(weight, None)
    tokens = torch.randn(6, 64, generator=generator)
    tokens[2] *= 300.0
    tokens[4] = 0.0
    scale = tokens.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
    range_row = torch.zeros(1, 64)
    range_row[0, 0], range_row[0, -1] = 1.0, -1.0
    pinned = torch.ops.quantized.linear_dynamic(torch.cat([tokens / scale, range_row]), layer._packed, False)
    assert torch.equal(layer(tokens), pinned[:-1] * scale)


def test_hybrid_int8_runs_one_token_on_fbgemm_and_several_on_int_mm_with_the_same_weights() -> None:
    weight, bias, generator = _weight_and_bias(12)
    hybrid = cpu_weights.HybridInt8Linear(weight, bias)
    packed = cpu_weights.PackedInt8Linear(weight, bias)
    quantized, scales = cpu_weights._int8_per_channel(weight, limit=cpu_weights.PACKED_WEIGHT_LIMIT)
    assert torch.equal(hybrid.weight_int8, quantized) and torch.equal(hybrid.weight_scale, scales)
    tokens = torch.randn(5, 64, generator=generator)
    assert torch.equal(hybrid(tokens[:1]), packed(tokens[:1]))  # a decoding step: fbgemm
    several = cpu_weights._int_mm_per_token(tokens, quantized, scales) + bias
    assert torch.equal(hybrid(tokens), several)
    assert not torch.equal(hybrid(tokens), packed(tokens))  # really the other kernel


def test_hybrid_layers_leave_the_output_head_on_fbgemm_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head computes one position's logits at a time: a second int8 copy of it would buy nothing."""
    monkeypatch.setattr(cpu_weights, "int8_slowdown", lambda: 0.3)
    monkeypatch.setattr(cpu_weights, "packed_int8_slowdown", lambda: 0.4)
    hybrid_times = KERNEL_TIMES_FOR[cpu_weights.HybridInt8Linear]
    monkeypatch.setattr(cpu_weights, "int8_kernel_times", lambda: hybrid_times)
    model = TransformersModel.load(build_tiny_model(tmp_path / "m"), name="tiny", quantize=True, threads=1)
    assert type(model.decoder.model.get_output_embeddings()) is cpu_weights.PackedInt8Linear
    assert model.weights.startswith("HybridInt8Linear")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_int8_embedding_rows_are_close_to_the_table_and_a_quarter_of_float32(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(13)
    table = (torch.randn(50, 32, generator=generator) * 0.05).to(dtype)
    table[7] = 0.0
    embedding = cpu_weights.Int8Embedding(table)
    ids = torch.tensor([[3, 7, 49], [0, 3, 3]])
    vectors = embedding(ids)
    exact = nn_embedding(ids, table.float())
    assert vectors.dtype == torch.float32 and vectors.shape == (2, 3, 32)
    assert _relative_error(vectors[0, [0, 2]], exact[0, [0, 2]]).max() < 1e-4
    assert torch.equal(vectors[0, 1], torch.zeros(32))  # an all-zero row stays zero
    assert embedding.weight.dtype == torch.int8 and embedding.weight.shape == (50, 32)
    assert sum(buffer.nbytes for buffer in embedding.buffers()) < table.float().nbytes / 4 + 50 * 4 + 1


@pytest.mark.parametrize(
    ("kind", "wide"),
    [
        (cpu_weights.PackedInt8Linear, cpu_weights.WidePackedInt8Linear),
        (cpu_weights.HybridInt8Linear, cpu_weights.WideHybridInt8Linear),
        (cpu_weights.Int8Linear, cpu_weights.Int8Linear),
    ],
)
def test_fbgemm_kinds_get_their_wide_twin_only_where_fbgemm_sums_exactly(
    monkeypatch: pytest.MonkeyPatch, kind: type[torch.nn.Module], wide: type[torch.nn.Module]
) -> None:
    monkeypatch.setattr(cpu_weights, "fbgemm_sums_exactly", lambda: True)
    assert cpu_weights._widened(kind) is wide
    monkeypatch.setattr(cpu_weights, "fbgemm_sums_exactly", lambda: False)
    assert cpu_weights._widened(kind) is kind


def test_the_wide_hybrid_reads_several_tokens_with_int8_linears_numbers() -> None:
    """Mood reads (several tokens) stay _int_mm's numbers bit for bit; one token runs on fbgemm."""
    weight, bias, generator = _weight_and_bias(21)
    wide = cpu_weights.WideHybridInt8Linear(weight, bias)
    exact = cpu_weights.Int8Linear(weight, bias)
    tokens = torch.randn(5, 64, generator=generator)
    assert torch.equal(wide(tokens), exact(tokens))
    assert torch.equal(wide(tokens[:1]), cpu_weights.WidePackedInt8Linear(weight, bias)(tokens[:1]))
    assert type(wide).numerics != type(exact).numerics  # decoding steps differ, so the keys do too


def test_the_fbgemm_probe_and_the_streamed_token_check_run_on_this_cpu() -> None:
    assert isinstance(cpu_weights.fbgemm_sums_exactly(), bool)
    packed, int_mm = cpu_weights.streamed_token_times(
        inner=64, columns=64, repeats=1, total_bytes=64 * 64 * 3
    )
    assert packed > 0 and int_mm > 0


def test_the_hybrid_heads_output_runs_on_the_matching_fbgemm_kind() -> None:
    assert cpu_weights._packed_twin(cpu_weights.WideHybridInt8Linear) is cpu_weights.WidePackedInt8Linear
    assert cpu_weights._packed_twin(cpu_weights.HybridInt8Linear) is cpu_weights.PackedInt8Linear
    assert cpu_weights._packed_twin(cpu_weights.Int8Linear) is cpu_weights.Int8Linear


def test_forgotten_pages_of_a_mapped_file_read_back_from_the_file(tmp_path: Path) -> None:
    """The start snapshot's pages handed back after packing: nothing is lost where they are read again."""
    weights = torch.randint(-127, 128, (64, 4096), dtype=torch.int8)
    torch.save({"w": weights}, tmp_path / "w.pt")
    mapped = torch.load(tmp_path / "w.pt", mmap=True)["w"]
    assert torch.equal(mapped, weights)
    cpu_weights.forget_pages(mapped)
    assert torch.equal(mapped, weights)


def test_a_packed_layer_from_the_snapshot_forgets_its_int8_weights_a_hybrid_keeps_them(
    tmp_path: Path,
) -> None:
    weight, _, generator = _weight_and_bias(22)
    tokens = torch.randn(3, 64, generator=generator)
    for kind in (cpu_weights.WidePackedInt8Linear, cpu_weights.WideHybridInt8Linear):
        layer = kind(weight, None)
        expected = layer(tokens[:1]), layer(tokens)
        torch.save(layer, tmp_path / "layer.pt")
        loaded = torch.load(tmp_path / "layer.pt", mmap=True, weights_only=False)
        loaded.pack()
        assert loaded._unpacked is None
        assert torch.equal(loaded(tokens[:1]), expected[0]) and torch.equal(loaded(tokens), expected[1])
