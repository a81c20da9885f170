"""The readout in the mood reader of a tiny real model: exact plain scores at zero, single == batched,
loading from the package and the cache at model load (with its log line), fallback on a mismatch."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bot.model import loader
from bot.model.decoder import cache_keyword
from bot.model.options import ModelOptions
from bot.model.readout import NEUTRAL, LanguageReadout, save_readout, tuned_readout_path
from bot.model.transformers_model import TransformersModel
from tests.tiny_model import build_tiny_model

TEXTS = ["I am happy today", "What time is it?", "I feel sad and tired", "hello", "今天心情很好", "我很难过"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> TransformersModel:
    return TransformersModel.load(tiny_dir, name="tiny", threads=1)


def random_readout(hidden: int, seed: int) -> LanguageReadout:
    generator = torch.Generator().manual_seed(seed)
    return LanguageReadout(
        scale=1 + 0.3 * torch.rand(3, generator=generator),
        bias=torch.randn(3, generator=generator),
        weight=torch.randn(3, hidden, generator=generator),
        mean=torch.randn(hidden, generator=generator),
        inv_std=torch.rand(hidden, generator=generator) + 0.5,
        layer=1,  # the tiny model has two layers: a readout reads the first
    )


def test_identity_readouts_read_exactly_the_plain_label_scores(model: TransformersModel) -> None:
    moods = model.moods
    moods.use_readouts({})
    plain = moods.mood_log_probs(TEXTS)
    moods.use_readouts(
        {language: LanguageReadout.identity(moods.hidden_size, 1) for language in moods.languages}
    )
    try:
        assert torch.equal(moods.mood_log_probs(TEXTS), plain)
        assert [mood.probabilities for mood in model.classify(TEXTS)] == [
            mood.probabilities for mood in _plain_classify(model)
        ]
    finally:
        moods.use_readouts({})


def _plain_classify(model: TransformersModel):  # type: ignore[no-untyped-def]
    model.moods.readouts_enabled = False
    try:
        return model.classify(TEXTS)
    finally:
        model.moods.readouts_enabled = True


def test_a_readout_changes_the_reads_alike_alone_and_batched(model: TransformersModel) -> None:
    moods = model.moods
    plain = moods.mood_log_probs(TEXTS)
    polarity = replace(random_readout(moods.hidden_size, 2), kind="polarity")
    moods.use_readouts({"en": random_readout(moods.hidden_size, 1), "zh": polarity})
    try:
        batched = moods.mood_log_probs(TEXTS)
        alone = torch.cat([moods.mood_log_probs([text]) for text in TEXTS])
        assert torch.allclose(batched, alone, atol=1e-5)
        for language in ("en", "zh"):
            rows = [index for index, text in enumerate(TEXTS) if moods.language_of(text) == language]
            assert rows and (batched[rows] - plain[rows]).abs().max() > 0.1
        assert torch.allclose(batched.exp().sum(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
        zh = [index for index, text in enumerate(TEXTS) if moods.language_of(text) == "zh"]
        assert torch.allclose(batched[zh, NEUTRAL], plain[zh, NEUTRAL], atol=1e-5)  # polarity keeps it
        moods.readouts_enabled = False
        assert torch.equal(moods.mood_log_probs(TEXTS), plain)
    finally:
        moods.readouts_enabled = True
        moods.use_readouts({})


def test_a_readout_of_another_size_or_language_is_refused(model: TransformersModel) -> None:
    with pytest.raises(ValueError, match="hidden size"):
        model.moods.use_readouts({"en": LanguageReadout.identity(model.moods.hidden_size + 1, 1)})
    with pytest.raises(ValueError, match="2 layers"):
        model.moods.use_readouts({"en": LanguageReadout.identity(model.moods.hidden_size, 2)})
    with pytest.raises(ValueError, match="no mood prompt"):
        model.moods.use_readouts({"fr": LanguageReadout.identity(model.moods.hidden_size, 1)})


def test_a_readout_reads_its_layer_averaged_over_the_message_tokens(model: TransformersModel) -> None:
    """The reader's corrected scores are the readout applied to layer 1's output averaged over the
    tokens after the prefix, as transformers' own pass computes it (its hidden_states)."""
    moods = model.moods
    readout = random_readout(moods.hidden_size, 5)
    text = "I feel sad and tired"
    language = moods.language_of(text)
    tokens = moods.token_ids(text, language)
    decoder = moods.decoder
    outputs = decoder.layers(
        input_ids=torch.tensor([tokens]),
        use_cache=True,
        output_hidden_states=True,
        **{cache_keyword(decoder.layers): decoder.seeded_cache(moods.prefix(language).key_values)},
    )
    pooled = outputs.hidden_states[1][0].float().mean(dim=0, keepdim=True)
    plain = moods.label_scores([tokens], language).log_probs
    expected = torch.log_softmax(readout.scores(plain, pooled) - moods.calibration(language), dim=-1)
    moods.use_readouts({language: readout})
    try:
        assert moods.readout_layers(language) == (1,)
        assert torch.allclose(moods.mood_log_probs([text]), expected, atol=1e-5)
    finally:
        moods.use_readouts({})


def test_the_tuned_readout_in_the_cache_is_used_at_load_and_said_so(
    tmp_path: Path, tiny_dir: Path, model: TransformersModel, caplog: pytest.LogCaptureFixture
) -> None:
    options = ModelOptions(model=str(tiny_dir), cache_dir=tmp_path / "cache", threads=1)
    identity = model.identity
    assert identity is not None
    english = random_readout(model.moods.hidden_size, 3)
    path = tuned_readout_path(options.cache_dir, tiny_dir.name)
    save_readout(path, {"en": english}, model=identity, prompts=model.moods.prompt_digests())
    with caplog.at_level(logging.INFO, logger="bot.model.transformers_model"):
        loaded = loader.load_model(options, progress=False)
    assert isinstance(loaded, TransformersModel)
    assert loaded.moods.readout("zh") is None
    found = loaded.moods.readout("en")
    assert found is not None and torch.equal(found.weight, english.weight)
    lines = [record.getMessage() for record in caplog.records if "Mood readout" in record.getMessage()]
    assert len(lines) == 1 and f"en from {path}" in lines[0] and "plain label scores for zh" in lines[0]


def test_a_readout_for_other_weights_falls_back_with_one_log_line(
    tmp_path: Path, tiny_dir: Path, model: TransformersModel, caplog: pytest.LogCaptureFixture
) -> None:
    options = ModelOptions(model=str(tiny_dir), cache_dir=tmp_path / "cache", threads=1)
    path = tuned_readout_path(options.cache_dir, tiny_dir.name)
    readout = random_readout(model.moods.hidden_size, 4)
    save_readout(path, {"en": readout}, model="another model", prompts=model.moods.prompt_digests())
    with caplog.at_level(logging.INFO):
        loaded = loader.load_model(options, progress=False)
    assert loaded.moods.readout("en") is None  # type: ignore[attr-defined]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "another model" in warnings[0].getMessage()
    assert any("none for this model" in record.getMessage() for record in caplog.records)


def test_transformers_pass_pools_the_same_layer_outputs_as_the_lean_pass(model: TransformersModel) -> None:
    decoder = model.moods.decoder
    lean = decoder.lean_pass
    assert lean is not None
    prefix = model.moods.prefix("en")
    rows = [model.moods.token_ids(text, "en") for text in ("I am happy today", "hello")]
    width = max(len(row) for row in rows)
    batch = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    lengths = [len(row) for row in rows]
    ours = decoder.read_states(batch, lengths, prefix.key_values, [1])
    decoder.use_lean_pass(None)
    try:
        theirs = decoder.read_states(batch, lengths, prefix.key_values, [1])
        with pytest.raises(ValueError, match=r"1\.\.1"):
            decoder.read_states(batch, lengths, prefix.key_values, [2])  # the last layer's output is normed
    finally:
        decoder.use_lean_pass(lean)
    assert torch.allclose(ours[0], theirs[0], atol=1e-5)
    assert torch.allclose(ours[1][1], theirs[1][1], atol=1e-5)
