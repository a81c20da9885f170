"""``moodmate tune-mood FILE.tsv [--language en|zh]``: fit the mood readout to an operator's messages.

The file holds ``label<TAB>text`` lines (labels positive, neutral, negative; a first line starting with
``label`` is a header, blank lines and ``#`` lines are skipped). Every message is read by the configured
model's mood reader, the readout is cross-validated (plain and current figures beside the tuned ones)
and then fitted on all of them and saved to the cache dir, where it takes precedence over the shipped
readout for that language from the next start on.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import MoodmateError

if TYPE_CHECKING:
    from bot.model.transformers_model import TransformersModel

#: Fewest usable messages, and of each of at least two labels, that tune-mood fits on.
MIN_MESSAGES = 30
MIN_PER_LABEL = 5
FOLDS = 5
LANGUAGES = ("en", "zh")
LABEL_NAMES = ("positive", "neutral", "negative")


class TuneInputError(ValueError):
    """The file cannot be tuned on; the message is one sentence for the operator."""


@dataclass(frozen=True, slots=True)
class Labelled:
    label: str
    text: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE.tsv", help="label<TAB>text lines")
    parser.add_argument(
        "--language",
        choices=LANGUAGES,
        default=None,
        help="the messages' language (default: the one most of them are in)",
    )


def read_labelled(path: Path) -> list[Labelled]:
    """The file's labelled messages; raises ``TuneInputError`` (one sentence) for anything wrong in it."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise TuneInputError(f"there is no file {path}.") from error
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise TuneInputError(f"cannot read {path}: {reason}.") from error
    rows: list[Labelled] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        if number == 1 and line.split("\t", 1)[0].strip().lower() == "label":
            continue
        if "\t" not in line:
            raise TuneInputError(f"line {number} of {path} is not label<TAB>text.")
        label, text = line.split("\t", 1)
        label = label.strip().lower()
        if label not in LABEL_NAMES:
            raise TuneInputError(
                f"line {number} of {path} has the label {label!r}; the labels are positive, neutral and "
                "negative."
            )
        if text.strip():
            rows.append(Labelled(label, text.strip()))
    return rows


def pick_language(rows: list[Labelled], wanted: str | None, path: Path) -> tuple[str, list[Labelled]]:
    """The language to fit and its rows (the bot reads each message in the language of its text)."""
    from bot.model.mood_prompt import prompt_language

    by_language: dict[str, list[Labelled]] = {}
    for row in rows:
        by_language.setdefault(prompt_language(row.text), []).append(row)
    language = wanted or max(by_language, key=lambda key: len(by_language[key]), default="en")
    chosen = by_language.get(language, [])
    if wanted and rows and len(chosen) * 2 < len(rows):
        other = max(by_language, key=lambda key: len(by_language[key]))
        raise TuneInputError(
            f"--language {wanted} was given, but {len(rows) - len(chosen)} of the {len(rows)} messages in "
            f"{path} are read as {other}; give --language {other} or a file in {wanted}."
        )
    counts = Counter(row.label for row in chosen)
    enough = [label for label, count in counts.items() if count >= MIN_PER_LABEL]
    if len(chosen) < MIN_MESSAGES or len(enough) < 2:
        raise TuneInputError(
            f"{path} has {len(chosen)} usable {language} messages "
            f"({', '.join(f'{counts[label]} {label}' for label in LABEL_NAMES)}); tune-mood needs at least "
            f"{MIN_MESSAGES}, with at least {MIN_PER_LABEL} of each of two labels."
        )
    return language, chosen


def run(path: Path, language: str | None, *, model: str | None = None) -> int:
    """Entry point of ``moodmate tune-mood``: 0 when a readout was saved, 2 with one sentence otherwise."""
    try:
        rows = read_labelled(path)
        language, chosen = pick_language(rows, language, path)
    except TuneInputError as error:
        print(f"moodmate tune-mood: {error}", file=sys.stderr)
        return 2
    from bot.bootstrap import load_settings, model_options

    try:
        settings = load_settings(**({"model": model} if model else {}))
        if settings.uses_inference_server:
            raise TuneInputError(
                "MOODMATE_INFERENCE_URL is set, and an inference server gives no hidden states: unset it to "
                "tune the local model's mood reads."
            )
        from bot.model.loader import load_model

        print(f"Loading {settings.model} ...", file=sys.stderr, flush=True)
        loaded = load_model(model_options(settings), progress=sys.stderr.isatty())
        from bot.model.transformers_model import TransformersModel

        if not isinstance(loaded, TransformersModel):
            raise TuneInputError(f"the model {settings.model} has no mood reader to tune.")
        if loaded.identity is None:
            raise TuneInputError(
                f"the model {settings.model} names no fixed weights (a Hugging Face id without a known "
                "commit), so a readout cannot be keyed to it; download it and give its directory."
            )
        return tune(loaded, chosen, language, Path(settings.cache_dir), skipped=len(rows) - len(chosen))
    except (TuneInputError, MoodmateError) as error:
        print(f"moodmate tune-mood: {error}", file=sys.stderr)
        return 2


def tune(
    model: TransformersModel, rows: list[Labelled], language: str, cache_dir: Path, *, skipped: int = 0
) -> int:
    """Read, cross-validate, fit and save; prints the figures."""
    from tqdm import tqdm

    identity = model.identity
    if identity is None:
        raise TuneInputError(f"the model {model.name} names no fixed weights to key a readout to.")

    from bot.model.readout import (
        DEFAULT_PENALTY,
        calibration_error,
        cross_validated,
        default_readout_layer,
        fit_readout,
        make_examples,
        read_features,
        read_readout_file,
        save_readout,
        set_score,
        tuned_readout_path,
    )

    reader = model.moods
    texts = [row.text for row in rows]
    layer = default_readout_layer(reader.layer_count)
    current = reader.readout(language)
    layers = sorted({layer, *(() if current is None else (current.layer,))})
    with tqdm(total=len(texts), desc="reading", unit="msg", file=sys.stderr) as bar:
        log_probs, pooled = read_features(reader, texts, language, layers, progress=bar.update)
    examples = make_examples(log_probs, pooled[layer], [row.label for row in rows], layer=layer)
    three = "neutral" in {row.label for row in rows}
    kind = "labels" if three else "polarity"  # positive/negative data says nothing of what is neutral
    with tqdm(total=FOLDS + 1, desc="fitting", unit="fit", file=sys.stderr) as bar:
        plain, tuned = cross_validated(examples, DEFAULT_PENALTY, folds=FOLDS, kind=kind, progress=bar.update)
        readout = fit_readout(examples, DEFAULT_PENALTY, kind=kind)
        bar.update()
    metric = "macro-recall" if three else "positive-vs-negative accuracy"
    note = f" ({skipped} in another language left out)" if skipped else ""
    print(f"{len(rows)} {language} messages{note}, {FOLDS}-fold cross-validated {metric}:")
    if not three:
        print("  (no neutral messages: the readout only splits positive from negative, neutral as before)")
    figures = [("plain label scores", plain)]
    if current is not None:
        figures.append(("current readout", current.apply(log_probs, pooled[current.layer])))
    figures.append(("tuned readout", tuned))
    for title, found in figures:
        print(
            f"  {title:<20} {set_score(found, examples.labels):.3f}"
            f"   (ECE {calibration_error(found, examples.labels):.3f})"
        )
    path = tuned_readout_path(cache_dir, model.name)
    readouts = {language: readout}
    prompts = reader.prompt_digests()
    try:  # keep the other languages' tuned readouts of this model
        earlier = read_readout_file(path) if path.is_file() else None
    except ValueError:
        earlier = None
    if earlier is not None and earlier.model == identity:
        for other, kept in earlier.languages.items():
            if other != language and earlier.prompts.get(other) == prompts.get(other):
                readouts[other] = kept
    save_readout(
        path,
        readouts,
        model=identity,
        prompts=prompts,
        info={
            "fitted_by": "moodmate tune-mood",
            "messages": len(rows),
            "penalty": DEFAULT_PENALTY.describe(),
            "layer": layer,
            "kind": kind,
        },
    )
    print(f"Saved to {path}; moodmate reads {language} moods with it from its next start.")
    return 0
