"""Grouped attention: the same numbers as transformers' SDPA path, without per-head key/value copies."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bot.model import cpu_attention  # noqa: E402
from bot.model.transformers_model import TransformersModel  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def _reference(query, key, value, mask):  # type: ignore[no-untyped-def]
    """Plain SDPA on repeated key/value heads, output as [B, q, H, d] like transformers' attention."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    output = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return output.transpose(1, 2)


def _tensors(batch: int = 2, heads: int = 6, kv_heads: int = 2, queries: int = 5, keys: int = 11):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(batch, queries, heads, 16, generator=generator).transpose(1, 2)  # model's layout
    key = torch.randn(batch, kv_heads, keys, 16, generator=generator)
    value = torch.randn(batch, kv_heads, keys, 16, generator=generator)
    causal = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    return query, key, value, causal


def test_no_mask_means_causal_attention_aligned_to_the_last_key() -> None:
    query, key, value, causal = _tensors()
    output, weights = cpu_attention.grouped_attention(torch.nn.Module(), query, key, value, None)
    assert weights is None
    assert output.shape == (2, 5, 6, 16)
    assert torch.allclose(output, _reference(query, key, value, causal), atol=1e-5)


def test_boolean_and_additive_masks_match_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key, value, causal = _tensors()
    mask = causal[None, None].repeat(2, 1, 1, 1)
    mask[1, :, :, :3] = False  # the second row's first keys are padding
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    expected = _reference(query, key, value, mask)
    monkeypatch.setattr(cpu_attention, "_MAX_SCORE_ELEMENTS", 2 * 6 * 11 * 2)  # two queries per chunk
    for given in (mask, additive):
        output, _ = cpu_attention.grouped_attention(torch.nn.Module(), query, key, value, given)
        assert torch.allclose(output, expected, atol=1e-5)


def test_a_boolean_mask_is_made_additive_once_per_pass_and_forgotten_with_it() -> None:
    import gc

    _, _, _, causal = _tensors()
    mask = causal[None, None].clone()
    first = cpu_attention._additive(mask, torch.float32)
    assert cpu_attention._additive(mask, torch.float32) is first  # every layer of the pass shares it
    assert torch.equal(first.isneginf(), ~mask) and first[mask].eq(0).all()
    other = mask.clone()
    assert cpu_attention._additive(other, torch.float32) is not first
    assert cpu_attention._additive(other, torch.float64).dtype == torch.float64
    del mask, other
    gc.collect()
    assert cpu_attention._last_additive is None


def test_unsupported_options_go_to_sdpa_and_single_token_decoding_computes_as_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers.integrations import sdpa_attention

    calls: list[dict[str, object]] = []
    original = sdpa_attention.sdpa_attention_forward

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    query, key, value, causal = _tensors(queries=4, keys=4)
    module = torch.nn.Module()
    module.num_key_value_groups = 3  # type: ignore[assignment]
    module.is_causal = True  # type: ignore[assignment]
    try:  # transformers 5 refuses soft-capping in its SDPA function; 4.x ignores it
        cpu_attention.grouped_attention(module, query, key, value, None, softcap=30.0)
    except ValueError as error:
        assert "softcap" in str(error)
    assert calls and calls[0].get("softcap") == 30.0
    decoded, _ = cpu_attention.grouped_attention(module, query[:, :, -1:], key, value, None)
    assert len(calls) == 1  # one query without a mask: torch's SDPA called directly, as transformers calls it
    assert torch.equal(decoded, original(module, query[:, :, -1:], key, value, None)[0])
    assert torch.allclose(decoded, _reference(query, key, value, causal)[:, -1:], atol=1e-5)
    mask = torch.ones(1, 1, 1, key.shape[2], dtype=torch.bool)
    cpu_attention.grouped_attention(module, query[:, :, -1:], key, value, mask)
    assert len(calls) == 2  # one query with a mask: transformers' SDPA function
    cpu_attention.grouped_attention(module, query, key, value, None)
    assert len(calls) == 2  # several queries: the grouped path


def test_tiny_model_gives_the_same_results_with_grouped_attention(tmp_path: Path) -> None:
    directory = build_tiny_model(tmp_path / "m")
    grouped = TransformersModel.load(directory, name="tiny", quantize=False, threads=1)
    assert grouped.decoder.model.config._attn_implementation == cpu_attention.ATTENTION_NAME
    plain = TransformersModel.load(directory, name="tiny", quantize=False, threads=1)
    plain.decoder.model.set_attn_implementation("sdpa")
    assert plain.decoder.model.config._attn_implementation == "sdpa"
    plain.moods.rebuild_prefixes()  # recomputed with SDPA
    texts = ["I am happy today", "我很难过", "What time is it? " * 4]
    assert torch.allclose(grouped.mood_log_probs(texts), plain.mood_log_probs(texts), atol=1e-5)
    ids = torch.tensor([grouped.moods.prefix("en").prefix_ids[:40]])
    with torch.inference_mode():
        expected = plain.decoder.model(input_ids=ids).logits
        assert torch.allclose(grouped.decoder.model(input_ids=ids).logits, expected, atol=1e-4)


@pytest.mark.parametrize("keys", [9, cpu_attention.GROUPED_QUERY_KEYS + 7])
def test_one_query_attention_gives_each_query_head_its_key_value_head(keys: int) -> None:
    torch.manual_seed(3)
    query, key, value = torch.randn(2, 6, 1, 8), torch.randn(2, 2, keys, 8), torch.randn(2, 2, keys, 8)
    found = cpu_attention.one_query_attention(query, key, value, 0.3)
    repeated_keys, repeated_values = key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1)
    weights = torch.softmax(query @ repeated_keys.transpose(-1, -2) * 0.3, dim=-1)  # head h: h // 3
    assert found.shape == (2, 6, 1, 8)
    assert torch.allclose(found, weights @ repeated_values, atol=1e-6)
