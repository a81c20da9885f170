"""The start snapshot: the lean modules compute as transformers' do, and a stored model as the one stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bot.model import cpu_weights
from bot.model.lean_modules import KeyValueCache, lean_copy
from bot.model.lean_pass import LeanPass
from bot.model.start_snapshot import (
    StartSnapshot,
    load_snapshot,
    pack_in_background,
    save_snapshot,
    share_tied_int8,
    snapshot_key,
    snapshot_path,
)
from tests.tiny_model import build_tiny_model


def _converted(directory: Path, kind: type[cpu_weights.Int8Linear] | type[cpu_weights.PackedInt8Linear]):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype="auto").eval()
    original = cpu_weights.choose_int8_layer
    cpu_weights.choose_int8_layer = lambda: kind  # type: ignore[assignment]
    try:
        cpu_weights.prepare_for_cpu(model, quantize=True)
    finally:
        cpu_weights.choose_int8_layer = original  # type: ignore[assignment]
    return model


def _run(model, tokens: list[int], steps: int = 3):  # type: ignore[no-untyped-def]
    """Last hidden states of a prefix pass, a batched read after it, and a few one-token steps."""
    from transformers import DynamicCache

    lean = LeanPass.for_decoder(model.get_decoder())
    assert lean is not None
    cache = DynamicCache(config=model.config) if hasattr(model.config, "to_dict") else KeyValueCache()
    outputs = [lean.extend(torch.tensor([tokens]), cache)]
    prefix = [(layer.keys, layer.values) for layer in cache.layers]
    outputs.append(lean.read_states(torch.tensor([tokens[:4], tokens[1:5]]), [4, 3], prefix)[0])
    for step in range(steps):
        outputs.append(lean.extend(torch.tensor([[tokens[step]]]), cache))
    return outputs


@pytest.mark.parametrize(
    "kind", [cpu_weights.Int8Linear, cpu_weights.PackedInt8Linear, cpu_weights.HybridInt8Linear]
)
def test_lean_modules_compute_as_transformers_and_survive_a_round_trip(
    tmp_path: Path, kind: type[cpu_weights.Int8Linear]
) -> None:
    model = _converted(build_tiny_model(tmp_path / "m", dtype="float16"), kind)
    tokens = [5, 17, 42, 8, 99, 23, 4]
    expected = _run(model, tokens)
    lean = lean_copy(model)
    assert lean is not None
    assert all(torch.equal(a, b) for a, b in zip(expected, _run(lean, tokens), strict=True))
    path = tmp_path / "lean.pt"
    torch.save(lean, path)
    stored = torch.load(path, mmap=True, weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(expected, _run(stored, tokens), strict=True))


def test_packing_in_the_background_goes_from_the_output_head_to_the_first_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _converted(build_tiny_model(tmp_path / "m"), cpu_weights.PackedInt8Linear)
    tokens = [5, 17, 42, 8, 99, 23, 4]
    expected = _run(model, tokens)
    path = tmp_path / "lean.pt"
    torch.save(lean_copy(model), path)
    stored = torch.load(path, mmap=True, weights_only=False)  # unpickled: every layer waits to be packed
    layers = [module for module in stored.modules() if isinstance(module, cpu_weights.PackedInt8Linear)]
    assert all(layer._packed_params is None for layer in layers)
    packed: list[object] = []
    original = cpu_weights.PackedInt8Linear.pack
    monkeypatch.setattr(
        cpu_weights.PackedInt8Linear, "pack", lambda self: packed.append(self) or original(self)
    )
    thread = pack_in_background(stored)
    assert thread is not None
    thread.join(timeout=60)
    assert packed == layers[::-1]  # the output head first: a reply waits for it, a mood read does not
    assert packed[0] is stored.get_output_embeddings()
    assert all(layer._packed_params is not None for layer in layers)
    assert pack_in_background(stored) is None  # nothing left to pack
    assert all(torch.equal(a, b) for a, b in zip(expected, _run(stored, tokens), strict=True))


def test_tied_int8_rows_are_shared_only_where_equal(tmp_path: Path) -> None:
    model = _converted(build_tiny_model(tmp_path / "m"), cpu_weights.Int8Linear)
    assert not share_tied_int8(model)  # the tiny model's head is its own matrix
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    head.weight_int8 = embedding.weight_int8.clone()
    head.weight_scale = embedding.weight_scale.clone()
    assert share_tied_int8(model)
    assert head.weight_int8.untyped_storage().data_ptr() == embedding.weight_int8.untyped_storage().data_ptr()


def _snapshot(tmp_path: Path) -> StartSnapshot:
    model = _converted(build_tiny_model(tmp_path / "m"), cpu_weights.Int8Linear)
    lean = lean_copy(model)
    assert lean is not None
    return StartSnapshot(
        name="tiny",
        model=lean,
        tokenizer=None,
        label_head=torch.randn(3, 32),
        label_bias=None,
        label_groups={"en": [[0], [1], [2]]},
        weights="int8",
        prefix_identity="tiny",
    )


def test_a_snapshot_is_read_back_only_under_its_own_key_and_a_broken_file_is_ignored(tmp_path: Path) -> None:
    key = snapshot_key("sha-of-tiny", quantize=True)
    assert key != snapshot_key("sha-of-other", quantize=True)
    assert key != snapshot_key("sha-of-tiny", quantize=False)
    path = snapshot_path(tmp_path / "cache", key)
    assert load_snapshot(path, key) is None  # none yet
    snapshot = _snapshot(tmp_path)
    assert save_snapshot(path, key, snapshot)
    back = load_snapshot(path, key)
    assert back is not None and torch.equal(back.label_head, snapshot.label_head)
    assert load_snapshot(path, "another key") is None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short, as by a crash
    assert load_snapshot(path, key) is None
    path.write_bytes(b"not a snapshot")
    assert load_snapshot(path, key) is None
    assert not list(path.parent.glob("*.tmp"))


def _options(tmp_path: Path, model_dir: Path):  # type: ignore[no-untyped-def]
    from bot.model.options import ModelOptions

    return ModelOptions(model=str(model_dir), cache_dir=tmp_path / "cache", quantize=True, threads=1)


def _snapshot_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "start").glob("*.pt"))


TEXTS = ["I am happy today, thanks a lot!", "I feel sad and tired.", "What time is it?", "今天心情很好。"]


def test_a_start_from_the_snapshot_reads_and_replies_as_the_full_load(tmp_path: Path) -> None:
    from bot.model.base import ChatTurn
    from bot.model.lean_modules import CausalLM
    from bot.model.loader import load_model

    model_dir = build_tiny_model(tmp_path / "m", dtype="float16")
    full = load_model(_options(tmp_path, model_dir), progress=False)
    assert not isinstance(full.decoder.model, CausalLM)  # type: ignore[attr-defined]
    [written] = _snapshot_files(tmp_path)
    warm = load_model(_options(tmp_path, model_dir), progress=False)
    assert isinstance(warm.decoder.model, CausalLM)  # type: ignore[attr-defined]
    assert _snapshot_files(tmp_path) == [written]
    assert torch.equal(full.mood_log_probs(TEXTS), warm.mood_log_probs(TEXTS))  # type: ignore[attr-defined]
    assert [m.label for m in full.classify(TEXTS)] == [m.label for m in warm.classify(TEXTS)]
    replies = []
    for model in (full, warm):
        model.sampling.temperature = 0  # type: ignore[attr-defined]  # greedy
        history = [ChatTurn("user", "hello world")]
        first = model.generate("Be kind.", history, max_new_tokens=12)
        history += [ChatTurn("assistant", first), ChatTurn("user", "I am happy today")]
        replies.append((first, model.generate("Be kind.", history, max_new_tokens=12)))
    assert replies[0] == replies[1]


def test_a_stale_or_broken_snapshot_falls_back_to_the_full_load_and_is_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.model import start_snapshot
    from bot.model.lean_modules import CausalLM
    from bot.model.loader import load_model

    # Full loads time the int8 kernels and may choose another on a busy machine: one kind for all here.
    monkeypatch.setattr(cpu_weights, "choose_int8_layer", lambda: cpu_weights.Int8Linear)
    model_dir = build_tiny_model(tmp_path / "m")
    expected = load_model(_options(tmp_path, model_dir), progress=False).mood_log_probs(TEXTS)  # type: ignore[attr-defined]
    [path] = _snapshot_files(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    again = load_model(_options(tmp_path, model_dir), progress=False)
    assert not isinstance(again.decoder.model, CausalLM)  # type: ignore[attr-defined]  # loaded in full
    assert torch.equal(again.mood_log_probs(TEXTS), expected)  # type: ignore[attr-defined]
    assert start_snapshot.load_snapshot(path, path.stem) is not None  # written again
    monkeypatch.setattr(start_snapshot, "prompt_version", lambda: "another prompt")  # a changed prompt
    stale = load_model(_options(tmp_path, model_dir), progress=False)
    assert not isinstance(stale.decoder.model, CausalLM)  # type: ignore[attr-defined]
    files = _snapshot_files(tmp_path)
    assert len(files) == 2 and path in files  # a new key, written beside the old one
    fresh = load_model(_options(tmp_path, model_dir), progress=False)
    assert isinstance(fresh.decoder.model, CausalLM)  # type: ignore[attr-defined]


def test_concurrent_first_starts_build_the_snapshot_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from bot.model.lean_modules import CausalLM
    from bot.model.loader import load_model

    model_dir = build_tiny_model(tmp_path / "m")
    with ThreadPoolExecutor(max_workers=2) as pool:
        models = list(pool.map(lambda _: load_model(_options(tmp_path, model_dir), progress=False), range(2)))
    kinds = sorted(isinstance(model.decoder.model, CausalLM) for model in models)  # type: ignore[attr-defined]
    assert kinds == [False, True]  # one loaded in full and wrote it, the other waited and read it
    assert len(_snapshot_files(tmp_path)) == 1
    assert not list((tmp_path / "cache" / "start").glob(".*.tmp"))
    assert torch.equal(models[0].mood_log_probs(TEXTS), models[1].mood_log_probs(TEXTS))  # type: ignore[attr-defined]


def test_the_lean_model_gives_every_positions_logits_like_transformers(tmp_path: Path) -> None:
    model = _converted(build_tiny_model(tmp_path / "m"), cpu_weights.Int8Linear)
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        lean = lean_copy(model)
        assert lean is not None
        found = lean(input_ids=ids).logits
    assert found.shape == expected.shape
    assert torch.allclose(found, expected, atol=1e-4)


def test_float32_weights_write_no_snapshot(tmp_path: Path) -> None:
    from dataclasses import replace

    from bot.model.loader import load_model

    model_dir = build_tiny_model(tmp_path / "m")
    load_model(replace(_options(tmp_path, model_dir), quantize=False), progress=False)
    assert _snapshot_files(tmp_path) == []
