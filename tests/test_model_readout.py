"""The learned mood readout's math, fitting and file checks (synthetic features, no model)."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bot.model.readout import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    Examples,
    LanguageReadout,
    Penalty,
    cross_validated,
    fit_readout,
    load_readout,
    make_examples,
    prompt_digest,
    readout_loss,
    save_readout,
    set_score,
)

HIDDEN = 12
LAYER = 3
LAYERS = 6  # the decoder's layer count the files are loaded for


def synthetic(rows: int, *, seed: int, labels: tuple[str, ...] = ("positive", "neutral", "negative")):
    """Label scores that know nothing and hidden states whose first dimensions carry the label."""
    generator = torch.Generator().manual_seed(seed)
    names = [labels[index % len(labels)] for index in range(rows)]
    index = torch.tensor([{"positive": POSITIVE, "neutral": NEUTRAL, "negative": NEGATIVE}[n] for n in names])
    hidden = torch.randn(rows, HIDDEN, generator=generator) * 3 + 5
    hidden[:, :3] += torch.nn.functional.one_hot(index, 3).float() * 4
    log_probs = torch.log_softmax(torch.randn(rows, 3, generator=generator) * 0.1, dim=-1)
    return log_probs, hidden, names


def test_identity_readout_gives_the_plain_scores_exactly() -> None:
    log_probs, hidden, _ = synthetic(40, seed=1)
    identity = LanguageReadout.identity(HIDDEN, LAYER)
    assert torch.equal(identity.scores(log_probs, hidden), log_probs)
    assert torch.equal(identity.apply(log_probs, hidden), torch.log_softmax(log_probs, dim=-1))


def test_an_infinite_penalty_fits_the_identity() -> None:
    log_probs, hidden, names = synthetic(60, seed=2)
    inf = math.inf
    readout = fit_readout(
        make_examples(log_probs, hidden, names, layer=LAYER), Penalty(weight=inf, bias=inf, scale=inf)
    )
    assert torch.equal(readout.apply(log_probs, hidden), torch.log_softmax(log_probs, dim=-1))


def test_two_class_loss_ignores_the_neutral_score() -> None:
    scores = torch.tensor([[0.5, 3.0, -1.0], [0.5, -7.0, -1.0]])
    labels = torch.tensor([POSITIVE, POSITIVE])
    two = readout_loss(scores, labels, torch.tensor([True, True]))
    expected = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(-1.0)))
    assert two.tolist() == pytest.approx([expected, expected])
    three = readout_loss(scores, labels, torch.tensor([False, False]))
    assert three[0] > three[1]  # the three-class loss does see it


def test_fitting_on_positive_negative_data_leaves_neutral_alone() -> None:
    log_probs, hidden, names = synthetic(80, seed=3, labels=("positive", "negative"))
    examples = make_examples(log_probs, hidden, names, layer=LAYER)
    assert bool(examples.two_class.all())
    readout = fit_readout(examples, Penalty(weight=1e-3))
    assert torch.count_nonzero(readout.weight[NEUTRAL]) == 0
    assert float(readout.bias[NEUTRAL]) == 0.0 and float(readout.scale[NEUTRAL]) == 1.0
    assert torch.count_nonzero(readout.weight[POSITIVE]) > 0


def test_a_polarity_readout_keeps_the_neutral_probability_and_splits_the_rest() -> None:
    log_probs, hidden, names = synthetic(200, seed=11)
    readout = fit_readout(
        make_examples(log_probs, hidden, names, layer=LAYER), Penalty(weight=1e-3), kind="polarity"
    )
    assert readout.kind == "polarity"
    plain = torch.log_softmax(log_probs, dim=-1)
    read = readout.apply(log_probs, hidden)
    assert torch.allclose(read[:, NEUTRAL], plain[:, NEUTRAL], atol=1e-6)
    assert torch.allclose(read.exp().sum(dim=-1), torch.ones(len(names)), atol=1e-6)
    leaning = [index for index, name in enumerate(names) if name != "neutral"]
    truth = torch.tensor([names[index] == "positive" for index in leaning])
    said = read[leaning, POSITIVE] > read[leaning, NEGATIVE]
    before = plain[leaning, POSITIVE] > plain[leaning, NEGATIVE]
    assert float((said == truth).float().mean()) > float((before == truth).float().mean()) + 0.25


def test_a_polarity_readout_is_fitted_on_the_leaning_rows_alone() -> None:
    log_probs, hidden, names = synthetic(120, seed=12)
    everything = make_examples(log_probs, hidden, names, layer=LAYER)
    leaning = torch.tensor([index for index, name in enumerate(names) if name != "neutral"])
    alone = fit_readout(everything.subset(leaning), Penalty(weight=1e-2), kind="polarity")
    beside = fit_readout(everything, Penalty(weight=1e-2), kind="polarity")
    assert torch.allclose(alone.weight, beside.weight) and torch.equal(
        alone.weight[NEUTRAL], torch.zeros(HIDDEN)
    )
    identity = LanguageReadout.identity(HIDDEN, LAYER)
    unchanged = replace(identity, kind="polarity")
    assert torch.allclose(unchanged.apply(log_probs, hidden), torch.log_softmax(log_probs, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="positive and negative rows"):
        fit_readout(everything.subset(torch.tensor([1, 4, 7])), kind="polarity")  # neutral rows only
    with pytest.raises(ValueError, match="kind"):
        fit_readout(everything, kind="sideways")


def test_class_balanced_weights() -> None:
    names = ["positive"] * 6 + ["negative"] * 2 + ["neutral"] * 2
    examples = make_examples(torch.zeros(10, 3), torch.zeros(10, HIDDEN), names, layer=LAYER, set_weight=3.0)
    per_class = [float(examples.weights[examples.labels == label].sum()) for label in (0, 1, 2)]
    assert per_class == pytest.approx([1.0, 1.0, 1.0])
    assert not bool(examples.two_class.any())


def test_the_readout_learns_what_the_label_scores_miss_and_the_penalty_holds_it_back() -> None:
    log_probs, hidden, names = synthetic(300, seed=4)
    test_log_probs, test_hidden, test_names = synthetic(300, seed=5)
    train = make_examples(log_probs, hidden, names, layer=LAYER)
    test = make_examples(test_log_probs, test_hidden, test_names, layer=LAYER)
    plain = set_score(torch.log_softmax(test.log_probs, dim=-1), test.labels)
    loose = fit_readout(train, Penalty(weight=1e-3))
    tight = fit_readout(train, Penalty(weight=1e3, bias=1e3, scale=1e3))
    assert set_score(loose.apply(test.log_probs, test.hidden), test.labels) > plain + 0.3
    assert float(tight.weight.abs().max()) < float(loose.weight.abs().max()) / 100


def test_cross_validation_scores_every_row_with_a_readout_that_did_not_see_it() -> None:
    log_probs, hidden, names = synthetic(150, seed=6)
    examples = make_examples(log_probs, hidden, names, layer=LAYER)
    calls: list[int] = []
    plain, fitted = cross_validated(examples, Penalty(weight=1e-2), folds=3, progress=lambda: calls.append(1))
    assert len(calls) == 3
    assert set_score(fitted, examples.labels) > set_score(plain, examples.labels) + 0.3


def _saved(tmp_path: Path) -> tuple[Path, LanguageReadout]:
    log_probs, hidden, names = synthetic(90, seed=7)
    readout = fit_readout(make_examples(log_probs, hidden, names, layer=LAYER), Penalty(weight=1e-2))
    path = tmp_path / "readout.safetensors"
    zh = fit_readout(
        make_examples(log_probs, hidden, names, layer=LAYER), Penalty(weight=1e-2), kind="polarity"
    )
    save_readout(path, {"en": readout, "zh": zh}, model="model-a", prompts={"en": "p-en", "zh": "p-zh"})
    return path, readout


def _load(path: Path, **changes: object) -> dict[str, LanguageReadout]:
    """``load_readout`` as the saved file's own model would call it, with ``changes``."""
    settings: dict[str, object] = {
        "model": "model-a",
        "prompts": {"en": "p-en", "zh": "p-zh"},
        "hidden_size": HIDDEN,
        "layer_count": LAYERS,
    }
    return load_readout(path, **{**settings, **changes})  # type: ignore[arg-type]


def test_a_saved_readout_loads_for_its_model_and_prompts(tmp_path: Path, caplog) -> None:
    path, readout = _saved(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = _load(path)
    assert set(loaded) == {"en", "zh"} and not caplog.records
    assert torch.equal(loaded["en"].weight, readout.weight)
    assert torch.equal(loaded["en"].scale, readout.scale)
    assert loaded["en"].layer == readout.layer == LAYER
    assert (loaded["en"].kind, loaded["zh"].kind) == ("labels", "polarity")


def test_a_readout_of_a_layer_the_model_lacks_is_not_used(tmp_path: Path, caplog) -> None:
    path, _ = _saved(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = _load(path, layer_count=LAYER)
    assert loaded == {}
    assert len(caplog.records) == 1 and "layers" in caplog.records[0].getMessage()


def _identity_tensors(language: str) -> dict[str, torch.Tensor]:
    """An identity readout's tensors as a readout file names them, for files written by hand."""
    readout = LanguageReadout.identity(HIDDEN, LAYER)
    return {
        f"{language}.{name}": getattr(readout, name)
        for name in ("scale", "bias", "weight", "mean", "inv_std")
    }


def test_a_file_of_the_first_format_is_not_used(tmp_path: Path, caplog) -> None:
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file(
        _identity_tensors("en"),
        str(old),
        metadata={"format": "moodmate-readout/1", "model": "model-a", "languages": "en"},
    )
    with caplog.at_level(logging.WARNING):
        assert _load(old) == {}
    assert len(caplog.records) == 1 and "moodmate-readout/2" in caplog.records[0].getMessage()


def test_a_readout_names_its_kind_and_an_unknown_one_is_not_used(tmp_path: Path, caplog) -> None:
    from safetensors.torch import save_file

    tensors = _identity_tensors("en")
    metadata = {"format": "moodmate-readout/2", "model": "model-a", "languages": "en", "prompt.en": "p-en"}
    before_kinds = tmp_path / "before-kinds.safetensors"
    save_file(tensors, str(before_kinds), metadata={**metadata, "layer.en": str(LAYER)})
    assert _load(before_kinds)["en"].kind == "labels"  # files written before kinds correct all three
    unknown = tmp_path / "unknown.safetensors"
    save_file(tensors, str(unknown), metadata={**metadata, "layer.en": str(LAYER), "kind.en": "sideways"})
    with caplog.at_level(logging.WARNING):
        assert _load(unknown) == {}
    assert len(caplog.records) == 1 and "unknown kind (sideways)" in caplog.records[0].getMessage()


def test_examples_of_two_layers_do_not_mix() -> None:
    log_probs, hidden, names = synthetic(20, seed=8)
    with pytest.raises(ValueError, match="one layer"):
        Examples.concat(
            [
                make_examples(log_probs, hidden, names, layer=2),
                make_examples(log_probs, hidden, names, layer=3),
            ]
        )


def test_another_model_falls_back_with_one_log_line(tmp_path: Path, caplog) -> None:
    path, _ = _saved(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = _load(path, model="model-b")
    assert loaded == {}
    assert len(caplog.records) == 1 and "another model" in caplog.records[0].getMessage()


def test_another_prompt_or_size_drops_that_language_with_one_log_line(tmp_path: Path, caplog) -> None:
    path, _ = _saved(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = _load(path, prompts={"en": "p-en", "zh": "new"})
    assert set(loaded) == {"en"}
    assert len(caplog.records) == 1 and "zh" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _load(path, hidden_size=8) == {}
    assert len(caplog.records) == 1


def test_a_missing_file_is_silent_and_a_broken_one_logs(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert _load(tmp_path / "none.safetensors") == {}
    assert not caplog.records
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        assert _load(broken) == {}
    assert len(caplog.records) == 1


def test_prompt_digest_changes_with_any_token() -> None:
    base = prompt_digest([1, 2, 3], [4], [[5], [6], [7]])
    assert base == prompt_digest([1, 2, 3], [4], [[5], [6], [7]])
    assert (
        len(
            {
                base,
                prompt_digest([1, 2, 9], [4], [[5], [6], [7]]),
                prompt_digest([1, 2, 3], [4], [[5], [7], [6]]),
            }
        )
        == 3
    )
