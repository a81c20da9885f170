"""The on-disk prefix store: a restart reuses the few-shot prefix key/values, and anything changed misses."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bot.model.prefix_store import PrefixStore, weights_identity  # noqa: E402
from bot.model.transformers_model import TransformersModel  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def _key_values(layers: int = 2, length: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(layers * 10 + length)
    return [
        (torch.randn(1, 2, length, 4, generator=generator), torch.randn(1, 2, length, 4, generator=generator))
        for _ in range(layers)
    ]


def test_stored_key_values_come_back_equal_and_only_for_their_prefix(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path / "kv", "model-a|int8")
    assert store.load([1, 2, 3]) is None
    saved = _key_values()
    store.save([1, 2, 3], saved)
    loaded = store.load([1, 2, 3])
    assert loaded is not None and len(loaded) == len(saved)
    for (keys, values), (saved_keys, saved_values) in zip(loaded, saved, strict=True):
        assert torch.equal(keys, saved_keys) and torch.equal(values, saved_values)
    assert store.load([1, 2, 4]) is None
    assert PrefixStore(tmp_path / "kv", "model-a|float32").load([1, 2, 3]) is None
    assert [path.suffix for path in (tmp_path / "kv").iterdir()] == [".safetensors"]  # no temporary left


def test_a_damaged_or_mismatched_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PrefixStore(tmp_path, "model")
    store.path_for([5, 6]).write_bytes(b"not a safetensors file")
    store.save([7, 8], _key_values(length=3))  # three positions stored for a two-token prefix
    store.path_for([7, 8]).rename(store.path_for([9, 10]))
    with caplog.at_level(logging.WARNING):
        assert store.load([5, 6]) is None
        assert store.load([9, 10]) is None
    assert caplog.text.count("Ignoring") == 2


def test_a_store_that_cannot_write_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        PrefixStore(blocker / "kv", "model").save([1], _key_values(length=1))
    assert "Could not save" in caplog.text


def test_weights_identity_follows_the_weight_files(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"12345")
    before = weights_identity(tmp_path, None)
    os.utime(weights, ns=(1, 2))
    assert weights_identity(tmp_path, None) != before
    assert weights_identity("org/model", "abc123") == "hub:org/model@abc123"
    assert weights_identity("org/model", None) is None  # a hub model of unknown revision is not stored


def test_a_second_load_reuses_the_stored_prefixes_and_reads_the_same(tmp_path: Path) -> None:
    directory = build_tiny_model(tmp_path / "m", dtype="float16")
    store_dir = tmp_path / "kv"
    first = TransformersModel.load(
        directory, name="tiny", quantize=False, threads=1, prefix_cache_dir=store_dir
    )
    stored = sorted(store_dir.iterdir())
    assert len(stored) == len(first.moods.languages)

    from transformers.models.qwen2 import modeling_qwen2

    prefix_lengths = {len(prefix.prefix_ids) for prefix in map(first.moods.prefix, first.moods.languages)}
    passes: list[int] = []  # input lengths of the decoder's passes
    original_forward = modeling_qwen2.Qwen2Model.forward

    @functools.wraps(original_forward)  # keeps the signature, whose cache keyword the model reads
    def counting_forward(self, input_ids=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        passes.append(input_ids.shape[-1])
        return original_forward(self, input_ids, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_qwen2.Qwen2Model, "forward", counting_forward)
        second = TransformersModel.load(
            directory, name="tiny", quantize=False, threads=1, prefix_cache_dir=store_dir
        )
        assert not prefix_lengths & set(passes)  # no prefix pass ran (only the lean pass's check)
        TransformersModel.load(directory, name="tiny", quantize=False, threads=1)
        assert prefix_lengths <= set(passes)  # without the store, one pass per prefix
    assert sorted(store_dir.iterdir()) == stored
    texts = ["I am happy today", "我很难过"]
    assert torch.equal(first.mood_log_probs(texts), second.mood_log_probs(texts))


def test_changed_int8_rounding_misses_the_stored_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.model import cpu_weights

    monkeypatch.setattr(cpu_weights, "int8_slowdown", lambda: 20.0)
    monkeypatch.setattr(cpu_weights, "packed_int8_slowdown", lambda: 0.4)
    monkeypatch.setattr(cpu_weights, "fbgemm_sums_exactly", lambda: False)  # PackedInt8Linear itself
    directory = build_tiny_model(tmp_path / "m", dtype="float16")
    store_dir = tmp_path / "kv"
    TransformersModel.load(directory, name="tiny", quantize=True, threads=1, prefix_cache_dir=store_dir)
    stored = set(store_dir.iterdir())
    monkeypatch.setattr(cpu_weights.PackedInt8Linear, "numerics", "other rounding")
    model = TransformersModel.load(
        directory, name="tiny", quantize=True, threads=1, prefix_cache_dir=store_dir
    )
    assert len(set(store_dir.iterdir()) - stored) == len(model.moods.languages)


def test_a_save_keeps_only_the_most_recently_used_files(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, "model", max_files=2)
    for number, prefix in enumerate(([1], [2])):
        store.save(prefix, _key_values(length=1))
        os.utime(store.path_for(prefix), ns=(10**18 + number, 10**18 + number))  # [1] older than [2]
    assert store.load([1]) is not None  # a hit marks [1] as used now, so [2] is the oldest
    store.save([3], _key_values(length=1))
    assert store.load([1]) is not None and store.load([3]) is not None
    assert store.load([2]) is None
    assert len(list(tmp_path.iterdir())) == 2
