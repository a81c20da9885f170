"""``moodmate tune-mood``: one clear sentence for bad input, and a real fit on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import cli
from adapters.cli import tune_mood as tune_cli


def write(tmp_path: Path, lines: list[str], name: str = "mine.tsv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def english_rows(count: int) -> list[str]:
    labels = ("positive", "neutral", "negative")
    words = {"positive": "so happy today", "neutral": "the bus comes at", "negative": "so sad and tired"}
    return [f"{labels[i % 3]}\t{words[labels[i % 3]]} {i}" for i in range(count)]


def one_sentence(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith("moodmate tune-mood: ") and "\n" not in error and error.endswith(".")
    return error


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (None, "there is no file"),
        (["label\ttext", "happy\tI won", *english_rows(40)], "line 2 of"),
        (["positive I won", *english_rows(40)], "is not label<TAB>text"),
        (english_rows(12), "needs at least 30"),
        (["positive\tgreat"] * 40, "at least 5 of each of two labels"),
    ],
)
def test_bad_input_gets_one_sentence_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, lines, expected
) -> None:
    monkeypatch.setenv("MOODMATE_MODEL", str(tmp_path / "no-model-here"))  # a load would fail differently
    path = tmp_path / "missing.tsv" if lines is None else write(tmp_path, lines)
    assert cli.main(["tune-mood", str(path)]) == 2
    assert expected in one_sentence(capsys)


def test_a_file_in_another_language_than_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, english_rows(40))
    assert cli.main(["tune-mood", str(path), "--language", "zh"]) == 2
    error = one_sentence(capsys)
    assert "--language zh" in error and "--language en" in error


def test_an_unknown_language_is_refused_by_the_parser(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["tune-mood", str(write(tmp_path, english_rows(40))), "--language", "fr"])
    assert raised.value.code == 2


def test_the_file_parses_headers_comments_and_case(tmp_path: Path) -> None:
    path = write(tmp_path, ["label\ttext", "# a note", "", "Positive\tyay\tand a tab", "negative\tugh"])
    rows = tune_cli.read_labelled(path)
    assert [(row.label, row.text) for row in rows] == [("positive", "yay\tand a tab"), ("negative", "ugh")]


def test_mixed_languages_fit_the_majority_and_leave_the_rest_out(tmp_path: Path) -> None:
    rows = tune_cli.read_labelled(
        write(tmp_path, [*english_rows(36), "positive\t今天很开心", "negative\t好难过"])
    )
    language, chosen = tune_cli.pick_language(rows, None, tmp_path / "mine.tsv")
    assert language == "en" and len(chosen) == 36


def test_a_model_bad_to_load_gets_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOODMATE_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path, english_rows(40))
    assert cli.main(["--model", str(tmp_path / "missing-dir"), "tune-mood", str(path)]) == 2
    assert "MOODMATE_MODEL" in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOODMATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_real_fit_on_a_tiny_model_is_saved_and_used_at_the_next_load(
    tmp_path: Path, model_dir: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.model.loader import load_model
    from bot.model.options import ModelOptions
    from bot.model.readout import read_readout_file, tuned_readout_path

    path = write(tmp_path, ["label\ttext", *english_rows(45), "positive\t今天很开心"])
    assert cli.main(["--model", str(model_dir), "tune-mood", str(path), "--language", "en"]) == 0
    out = capsys.readouterr().out
    assert "45 en messages (1 in another language left out), 5-fold cross-validated macro-recall" in out
    assert "plain label scores" in out and "tuned readout" in out
    saved = tuned_readout_path(cache, model_dir.name)
    assert f"Saved to {saved}" in out
    assert set(read_readout_file(saved).languages) == {"en"}
    loaded = load_model(ModelOptions(model=str(model_dir), cache_dir=cache, threads=1), progress=False)
    assert loaded.moods.readout("en") is not None and loaded.moods.readout("zh") is None  # type: ignore[attr-defined]


def test_positive_and_negative_messages_alone_fit_a_polarity_readout(
    tmp_path: Path, model_dir: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.model.readout import read_readout_file, tuned_readout_path

    rows = [row for row in english_rows(60) if not row.startswith("neutral")]
    assert cli.main(["--model", str(model_dir), "tune-mood", str(write(tmp_path, rows))]) == 0
    out = capsys.readouterr().out
    assert "40 en messages, 5-fold cross-validated positive-vs-negative accuracy" in out
    assert "neutral as before" in out
    saved = read_readout_file(tuned_readout_path(cache, model_dir.name))
    assert saved.languages["en"].kind == "polarity" and saved.info["kind"] == "polarity"
