"""``moodmate classify``: file/stdin input, tab or JSON output, blank lines skipped, batching."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from adapters.cli import classify as classify_cli
from bot.model.fake import FakeModel
from tests.tiny_model import build_tiny_model


def test_classify_stream_tab_output_skips_blank_lines_and_batches() -> None:
    model = FakeModel()
    out = io.StringIO()
    lines = ["I love this\n", "\n", "   \n", "I am so sad\tand tired\n", "ok"]
    count = classify_cli.classify_stream(model, lines, out, batch_size=2)
    rows = out.getvalue().splitlines()
    assert count == 3 and len(rows) == 3
    label, confidence, text = rows[0].split("\t")
    assert (label, text) == ("positive", "I love this") and confidence == "0.900"
    assert rows[1].split("\t")[0] == "negative" and rows[1].endswith("I am so sad and tired")
    assert model.classify_batches == [["I love this", "I am so sad\tand tired"], ["ok"]]


def test_classify_stream_json_lines() -> None:
    out = io.StringIO()
    classify_cli.classify_stream(FakeModel(), ["今天好开心"], out, as_json=True)
    record = json.loads(out.getvalue())
    assert record["label"] == "positive" and record["text"] == "今天好开心"
    assert set(record["probabilities"]) == {"positive", "neutral", "negative"}
    assert abs(sum(record["probabilities"].values()) - 1.0) < 1e-3


def test_main_with_a_real_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = build_tiny_model(tmp_path / "model")
    messages = tmp_path / "messages.txt"
    messages.write_text("hello\n\nI am happy\n今天很难过\n", encoding="utf-8")
    monkeypatch.setenv("MOODMATE_CACHE_DIR", str(tmp_path / "cache"))
    assert classify_cli.main([str(messages), "--model", str(model_dir), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["text"] for record in records] == ["hello", "I am happy", "今天很难过"]
    assert all(record["label"] in {"positive", "neutral", "negative"} for record in records)


def test_main_reports_a_bad_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messages = tmp_path / "messages.txt"
    messages.write_text("hello\n", encoding="utf-8")
    assert classify_cli.main([str(messages), "--model", str(tmp_path / "missing-dir")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("moodmate classify:") and "MOODMATE_MODEL" in error and "\n" not in error


def test_main_reports_an_unreadable_file_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The model directory does not exist either: the file is checked first, so no model is loaded.
    assert classify_cli.main([str(tmp_path / "missing.txt"), "--model", str(tmp_path / "missing-dir")]) == 2
    error = capsys.readouterr().err
    assert "cannot read" in error and "MOODMATE_MODEL" not in error


@pytest.mark.parametrize("order", ["options first", "file first"])
def test_moodmate_classify_passes_every_argument_on(
    order: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapters import cli

    model_dir = build_tiny_model(tmp_path / "model")
    messages = tmp_path / "messages.txt"
    messages.write_text("hello\nI am happy\n", encoding="utf-8")
    monkeypatch.setenv("MOODMATE_CACHE_DIR", str(tmp_path / "cache"))
    options = ["--json", "--batch-size", "1"]
    argv = [*options, str(messages)] if order == "options first" else [str(messages), *options]
    assert cli.main(["--model", str(model_dir), "classify", *argv]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["text"] for record in records] == ["hello", "I am happy"]


def test_moodmate_classify_reads_stdin_with_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapters import cli

    model_dir = build_tiny_model(tmp_path / "model")
    monkeypatch.setenv("MOODMATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.stdin", io.StringIO("今天很难过\n"))
    assert cli.main(["classify", "--json", "--model", str(model_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "今天很难过"


def test_other_commands_refuse_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from adapters import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["stats", "--json"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --json" in capsys.readouterr().err
