"""The lean pass: mood reads and reply steps with the same numbers as transformers' forward pass."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bot.model import lean_pass  # noqa: E402
from bot.model.base import ChatTurn  # noqa: E402
from bot.model.cpu_attention import GROUPED_QUERY_KEYS, use_grouped_attention  # noqa: E402
from bot.model.cpu_weights import HybridInt8Linear, Int8Linear, PackedInt8Linear, _convert_linears  # noqa: E402
from bot.model.decoder import cache_keyword  # noqa: E402
from bot.model.fused_projections import fuse_shared_input_projections  # noqa: E402
from bot.model.lean_pass import LeanPass  # noqa: E402
from bot.model.transformers_model import TransformersModel  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402

_SIZES = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def _decoder(kind: str, **overrides: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(5)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**_SIZES, **overrides)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**_SIZES, **overrides)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()


def _alone(model, key_values, row: list[int]):  # type: ignore[no-untyped-def]
    """transformers' decoder outputs (with every layer's) for one row after the prefix ``key_values``."""
    decoder = model.get_decoder()
    with torch.inference_mode():
        seeded = transformers.DynamicCache(config=model.config)
        for index, (keys, values) in enumerate(key_values):
            seeded.update(keys, values, index)
        return decoder(
            input_ids=torch.tensor([row]), use_cache=True, output_hidden_states=True,
            **{cache_keyword(decoder): seeded},
        )


def _prefix_key_values(model, prefix_ids: list[int]):  # type: ignore[no-untyped-def]
    """transformers' per-layer keys and values of ``prefix_ids``."""
    decoder = model.get_decoder()
    with torch.inference_mode():
        cache = transformers.DynamicCache(config=model.config)
        decoder(input_ids=torch.tensor([prefix_ids]), use_cache=True, **{cache_keyword(decoder): cache})
    return [(layer.keys, layer.values) for layer in cache.layers]


def _prefix_and_reference(model, rows: list[list[int]], prefix_ids: list[int]):  # type: ignore[no-untyped-def]
    """Prefix key/values, the right-padded batch, and transformers' last hidden state of each row read
    alone."""
    width = max(len(row) for row in rows)
    batch = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    key_values = _prefix_key_values(model, prefix_ids)
    last = torch.cat([_alone(model, key_values, row).last_hidden_state[:, -1] for row in rows])
    return key_values, batch, [len(row) for row in rows], last


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_the_lean_pass_reads_bit_for_bit_as_transformers_does(kind: str) -> None:
    model = _decoder(kind)
    assert use_grouped_attention(model)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17, 18, 19, 20, 21]]
    key_values, batch, lengths, expected = _prefix_and_reference(model, rows, list(range(20, 50)))
    lean = LeanPass.for_decoder(model.get_decoder())
    assert lean is not None
    for row, length in enumerate(lengths):  # alone: as transformers reads the row alone, bit for bit
        alone = lean.read_states(batch[row : row + 1, :length], [length], key_values)[0]
        assert torch.equal(alone, expected[row : row + 1])
    # Batched, a float32 product may round differently with how many rows it multiplies (MKL on an
    # AMD EPYC); int8 layers do not (the next test).
    found = lean.read_states(batch, lengths, key_values)[0]
    assert torch.allclose(found, expected, rtol=1e-5, atol=1e-5)
    assert [tensor.shape[2] for tensor in key_values[0]] == [30, 30]  # the prefix is left unchanged


def test_int8_reads_are_the_same_bit_for_bit_alone_and_beside_longer_rows() -> None:
    # Heads of 64 after a 500-token prefix, as in the bundled model: with one attention call over the
    # batch, 21 of these 27 reads differed from the same read alone (the pads' keys changed the rounding).
    torch.manual_seed(5)
    config = transformers.Qwen2Config(
        vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    assert use_grouped_attention(model)
    _convert_linears(model, Int8Linear)
    key_values = _prefix_key_values(model, [index % 97 for index in range(500)])
    lean = LeanPass.for_decoder(model.get_decoder())
    assert lean is not None
    for length in range(3, 30):
        row = [(7 * index + length) % 97 for index in range(length)]
        alone = lean.read_states(torch.tensor([row]), [length], key_values)[0]
        batch = torch.tensor([row + [0] * length, row + row])
        beside = lean.read_states(batch, [length, 2 * length], key_values)[0]
        assert torch.equal(alone[0], beside[0]), length


def test_pooled_layers_are_transformers_hidden_states_averaged_over_each_rows_real_tokens() -> None:
    model = _decoder("qwen2")
    assert use_grouped_attention(model)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    key_values, batch, lengths, expected_last = _prefix_and_reference(model, rows, list(range(20, 40)))
    lean = LeanPass.for_decoder(model.get_decoder())
    assert lean is not None
    last, pooled = lean.read_states(batch, lengths, key_values, [1])
    assert torch.allclose(last, expected_last, rtol=1e-5, atol=1e-5)  # float32, batched: see above
    for row, tokens in enumerate(rows):
        states = _alone(model, key_values, tokens).hidden_states
        assert torch.allclose(pooled[1][row], states[1][0].float().mean(dim=0), atol=1e-6)
    padded = lean.read_states(batch, [len(batch[1])] * 2, key_values, [1])[1][1]
    assert not torch.allclose(pooled[1][1], padded[1])  # the pads are left out


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_reply_steps_extend_the_cache_bit_for_bit_as_transformers_does(kind: str) -> None:
    model = _decoder(kind)
    assert use_grouped_attention(model)
    lean = LeanPass.for_decoder(model.get_decoder())
    assert lean is not None
    keyword = cache_keyword(model)
    head = model.get_output_embeddings()
    caches = [transformers.DynamicCache(config=model.config) for _ in range(2)]
    long_turn = [index % 90 for index in range(GROUPED_QUERY_KEYS)]  # later steps: the long-cache call
    steps = [
        torch.tensor([list(range(30, 42))]),
        torch.tensor([[7]]),
        torch.tensor([[8]]),
        torch.tensor([[3, 4]]),
        torch.tensor([long_turn]),
        torch.tensor([[9]]),
        torch.tensor([[10]]),
    ]
    with torch.inference_mode():
        for step in steps:  # a prompt, two decoding steps, a next turn's tokens, ...
            expected = model(input_ids=step, use_cache=True, logits_to_keep=1, **{keyword: caches[0]}).logits
            assert torch.equal(head(lean.extend(step, caches[1])), expected)
    assert caches[1].get_seq_length() == caches[0].get_seq_length() == 18 + GROUPED_QUERY_KEYS
    for ours, theirs in zip(caches[1].layers, caches[0].layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_decoding_steps_of_joined_projections_take_the_one_token_path_bit_for_bit(kind: str) -> None:
    reference = _decoder(kind)
    model = _decoder(kind)
    assert fuse_shared_input_projections(model) == _SIZES["num_hidden_layers"]
    assert use_grouped_attention(model) and use_grouped_attention(reference)
    lean = LeanPass.for_decoder(model.get_decoder())
    assert lean is not None and lean._one_token_ready
    keyword = cache_keyword(model)
    head = model.get_output_embeddings()
    caches = [transformers.DynamicCache(config=model.config) for _ in range(2)]
    taken: list[int] = []
    real = lean._one_token
    lean._one_token = lambda *args: taken.append(1) or real(*args)  # type: ignore[method-assign]
    steps = [torch.tensor([list(range(30, 42))]), *(torch.tensor([[token]]) for token in (7, 8, 9))]
    with torch.inference_mode():
        for step in steps:  # a prompt, then three decoding steps
            expected = reference(input_ids=step, use_cache=True, logits_to_keep=1, **{keyword: caches[0]})
            assert torch.equal(head(lean.extend(step, caches[1])), expected.logits)
    assert len(taken) == 3
    for ours, theirs in zip(caches[1].layers, caches[0].layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


@pytest.mark.parametrize("layer_kind", [PackedInt8Linear, HybridInt8Linear])
def test_decoding_steps_on_fbgemm_call_it_directly_with_the_layers_numbers(layer_kind: type) -> None:
    model = _decoder("qwen2")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_proj.bias"):  # transformers starts them at zero
                parameter.normal_(std=0.5)
    fuse_shared_input_projections(model)
    _convert_linears(model, layer_kind)
    assert use_grouped_attention(model)
    decoder = model.get_decoder()
    shipped, through_modules = LeanPass.for_decoder(decoder), LeanPass.for_decoder(decoder)
    assert shipped is not None and through_modules is not None
    assert all(products is not None for products in shipped._fbgemm_products)
    through_modules._fbgemm_products = [None] * _SIZES["num_hidden_layers"]
    head = model.get_output_embeddings()
    caches = [transformers.DynamicCache(config=model.config) for _ in range(2)]
    steps = [torch.tensor([list(range(30, 42))]), *(torch.tensor([[token]]) for token in (7, 8, 9))]
    with torch.inference_mode():
        for step in steps:  # a prompt, then three decoding steps
            expected = head(through_modules.extend(step, caches[0]))
            assert torch.equal(head(shipped.extend(step, caches[1])), expected)
    for ours, theirs in zip(caches[1].layers, caches[0].layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


def test_layers_with_another_int8_kernel_or_mlp_keep_their_modules_in_decoding_steps() -> None:
    model = _decoder("qwen2")
    fuse_shared_input_projections(model)
    _convert_linears(model, Int8Linear)
    assert lean_pass.fbgemm_products(model.get_decoder().layers[0]) is None
    fbgemm = _decoder("qwen2")
    fuse_shared_input_projections(fbgemm)
    _convert_linears(fbgemm, PackedInt8Linear)
    layer = fbgemm.get_decoder().layers[0]
    assert lean_pass.fbgemm_products(layer) is not None
    layer.mlp.act_fn = torch.nn.GELU()
    assert lean_pass.fbgemm_products(layer) is None


def test_decoders_without_joined_projections_step_through_the_general_path() -> None:
    lean = LeanPass.for_decoder(_decoder("qwen2").get_decoder())
    assert lean is not None and not lean._one_token_ready


def test_with_sdpa_attention_the_lean_pass_agrees_within_rounding() -> None:
    model = _decoder("qwen2")
    assert model.config._attn_implementation == "sdpa"
    rows = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    key_values, batch, lengths, expected = _prefix_and_reference(model, rows, list(range(20, 40)))
    found = LeanPass.for_decoder(model.get_decoder()).read_states(batch, lengths, key_values)[0]  # type: ignore[union-attr]
    assert torch.allclose(found, expected, atol=1e-5)


def test_decoders_built_otherwise_keep_transformers_pass() -> None:
    sliding = _decoder("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert "sliding_attention" in sliding.config.layer_types
    assert LeanPass.for_decoder(sliding.get_decoder()) is None
    assert LeanPass.for_decoder(SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))) is None  # type: ignore[arg-type]
    decoder = _decoder("llama").get_decoder()
    del decoder.layers[1].self_attn.o_proj
    assert LeanPass.for_decoder(decoder) is None


@pytest.mark.parametrize("quantize", [False, True])
def test_the_models_mood_reads_use_the_lean_pass_and_read_the_same(tmp_path: Path, quantize: bool) -> None:
    directory = build_tiny_model(tmp_path / "m")
    model = TransformersModel.load(directory, name="tiny", quantize=quantize, threads=1)
    assert isinstance(model.decoder.lean_pass, LeanPass)
    texts = ["I am happy today", "我很难过", "What time is it? " * 4, "ok"]
    lean = model.mood_log_probs(texts)
    model.decoder.use_lean_pass(None)
    assert torch.equal(lean, model.mood_log_probs(texts))


def test_replies_are_the_same_with_the_lean_pass(tmp_path: Path) -> None:
    directory = build_tiny_model(tmp_path / "m")
    model = TransformersModel.load(directory, name="tiny", quantize=True, threads=1)
    assert model.decoder.lean_pass is not None
    first = [ChatTurn("user", "hello, what time is it?")]

    def conversation() -> list[str]:
        model.replies.forget_conversations()
        model.replies.seed(3)
        reply = model.generate("Be kind.", first, max_new_tokens=12)
        later = [*first, ChatTurn("assistant", reply), ChatTurn("user", "thanks a lot")]
        return [reply, model.generate("Be kind.", later, max_new_tokens=12)]  # reuses the first turn's cache

    lean = conversation()
    model.decoder.use_lean_pass(None)
    assert conversation() == lean
    assert any(lean)


def test_a_lean_pass_that_computes_otherwise_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = build_tiny_model(tmp_path / "m")
    real = LeanPass.extend

    def shifted(self, input_ids, cache):  # type: ignore[no-untyped-def]
        return real(self, input_ids, cache) * 1.01

    monkeypatch.setattr(lean_pass.LeanPass, "extend", shifted)
    with caplog.at_level(logging.WARNING, logger="bot.model.decoder"):
        model = TransformersModel.load(directory, name="tiny", quantize=False, threads=1)
    assert model.decoder.lean_pass is None
    assert "lean pass differs" in caplog.text

    def failing(self, input_ids, cache):  # type: ignore[no-untyped-def]
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(lean_pass.LeanPass, "extend", failing)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bot.model.decoder"):
        model = TransformersModel.load(directory, name="tiny", quantize=False, threads=1)
    assert model.decoder.lean_pass is None
    assert "lean pass failed" in caplog.text
    assert model.classify(["I am happy today"])[0].label is not None
    assert isinstance(model.generate("Be kind.", [ChatTurn("user", "hello")], max_new_tokens=4), str)
