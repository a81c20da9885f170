"""Joined projections: the same numbers as the separate layers, one product per input."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bot.model import cpu_weights, fused_projections  # noqa: E402
from bot.model.fused_projections import ProjectionSlice, fuse_shared_input_projections  # noqa: E402
from bot.model.transformers_model import TransformersModel  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


class _Attention(nn.Module):
    def __init__(self, *, bias: bool = True, key_inputs: int = 16) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 12, bias=bias)
        self.k_proj = nn.Linear(key_inputs, 4, bias=bias)
        self.v_proj = nn.Linear(key_inputs, 4, bias=bias)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        other = hidden if memory is None else memory
        return self.q_proj(hidden), self.k_proj(other), self.v_proj(other)


def _counting(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_joined_layers_give_the_separate_layers_numbers_with_one_product_per_input() -> None:
    torch.manual_seed(0)
    attention = _Attention()
    inputs = [torch.randn(2, 5, 16), torch.randn(1, 16)]
    expected = [attention(hidden) for hidden in inputs]
    assert fuse_shared_input_projections(attention) == 1
    assert isinstance(attention.q_proj, ProjectionSlice)
    calls = _counting(attention.fused_qkv.fused)
    for hidden, result in zip(inputs, expected, strict=True):
        torch.testing.assert_close(attention(hidden), result)
    assert len(calls) == 2  # one product per input, not one per layer
    assert attention.fused_qkv._pending is None  # nothing kept once every layer had its part
    assert attention.k_proj(inputs[0]).is_contiguous()


def test_layers_fed_different_inputs_still_get_their_own_results() -> None:
    torch.manual_seed(1)
    attention = _Attention()
    hidden, memory = torch.randn(3, 16), torch.randn(7, 16)
    expected = attention(hidden, memory)
    fuse_shared_input_projections(attention)
    torch.testing.assert_close(attention(hidden, memory), expected)


@pytest.mark.parametrize("mismatch", ["input sizes", "bias"])
def test_layers_that_cannot_be_joined_are_left_alone(mismatch: str) -> None:
    attention = _Attention(key_inputs=8) if mismatch == "input sizes" else _Attention()
    if mismatch == "bias":
        attention.v_proj = nn.Linear(16, 4, bias=False)
    assert fuse_shared_input_projections(attention) == 0
    assert all(isinstance(module, nn.Linear) for module in attention.children())


@pytest.mark.parametrize(
    "times",
    [cpu_weights.KernelTimes(2.0, 4.0, 1.0, 3.0), cpu_weights.KernelTimes(4.0, 2.0, 1.0, 3.0)],
    ids=["PackedInt8Linear", "HybridInt8Linear"],
)
def test_int8_tiny_model_joins_query_key_value_with_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, times: cpu_weights.KernelTimes
) -> None:
    monkeypatch.setattr(cpu_weights, "int8_slowdown", lambda: 0.3)
    monkeypatch.setattr(cpu_weights, "packed_int8_slowdown", lambda: 0.4)
    monkeypatch.setattr(cpu_weights, "int8_kernel_times", lambda: times)
    monkeypatch.setattr(cpu_weights, "fbgemm_sums_exactly", lambda: False)
    directory = build_tiny_model(tmp_path / "m", dtype="float16")
    joined = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    monkeypatch.setattr(fused_projections, "SHARED_INPUT_GROUPS", ())
    separate = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    assert (
        sum(isinstance(m, ProjectionSlice) for m in joined.decoder.model.modules()) == 6
    )  # 2 layers x q, k, v
    assert not any(isinstance(m, ProjectionSlice) for m in separate.decoder.model.modules())
    texts = ["I am happy today", "我很难过", "What time is it? " * 4]
    assert torch.equal(joined.mood_log_probs(texts), separate.mood_log_probs(texts))
    ids = torch.tensor([joined.decoder.encode("hello there, how are you")])
    with torch.inference_mode():
        assert torch.equal(
            joined.decoder.model(input_ids=ids).logits, separate.decoder.model(input_ids=ids).logits
        )


def test_float32_weights_keep_the_layers_transformers_built(tmp_path: Path) -> None:
    model = TransformersModel.load(build_tiny_model(tmp_path / "m"), name="tiny", quantize=False, threads=1)
    assert not any(isinstance(m, ProjectionSlice) for m in model.decoder.model.modules())
