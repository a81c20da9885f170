"""``moodmate classify [FILE] [--json]``: read the mood of each line of a file (or stdin)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from bot.errors import MoodmateError
from bot.model.base import LanguageModel

logger = logging.getLogger(__name__)

BATCH_SIZE = 8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moodmate classify",
        description="Read the mood of messages, one per line, from FILE or standard input.",
    )
    parser.add_argument(
        "file", nargs="?", default="-", help="text file with one message per line (default: stdin)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of tab-separated text")
    parser.add_argument("--model", default=None, help="model to use (overrides MOODMATE_MODEL)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="messages per model call")
    return parser


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        batch.append(text)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def format_line(
    text: str, label: str, confidence: float, probabilities: dict[str, float], *, as_json: bool
) -> str:
    """One output line: ``label<TAB>confidence<TAB>message`` or a JSON object."""
    if as_json:
        return json.dumps(
            {
                "label": label,
                "confidence": round(confidence, 4),
                "probabilities": {key: round(value, 4) for key, value in probabilities.items()},
                "text": text,
            },
            ensure_ascii=False,
        )
    flat = text.replace("\t", " ")
    return f"{label}\t{confidence:.3f}\t{flat}"


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``moodmate classify``; returns the process exit code."""
    args = _parser().parse_args(argv)
    for stream in (sys.stdin, sys.stdout):  # messages are UTF-8 whatever the locale says
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(encoding="utf-8", errors="replace")
    try:  # before the model loads: a wrong path should not cost a model load
        source: TextIO = (
            sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
        )
    except OSError as error:
        print(f"moodmate classify: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    from bot.bootstrap import load_settings, model_options
    from bot.model.loader import load_model

    with contextlib.nullcontext(source) if source is sys.stdin else source:
        try:
            settings = load_settings(**({"model": args.model} if args.model else {}))
            model = load_model(model_options(settings), progress=sys.stderr.isatty())
        except MoodmateError as error:
            print(f"moodmate classify: {error}", file=sys.stderr)
            return 2
        try:
            classify_stream(model, source, sys.stdout, as_json=args.json, batch_size=max(1, args.batch_size))
        except MoodmateError as error:
            print(f"moodmate classify: {error}", file=sys.stderr)
            return 1
    return 0


def classify_stream(
    model: LanguageModel,
    lines: Iterable[str],
    out: TextIO,
    *,
    as_json: bool = False,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Classify non-blank ``lines`` in batches, writing one line per message; returns how many."""
    count = 0
    for batch in _batches(lines, batch_size):
        moods = model.classify(batch)
        for text, mood in zip(batch, moods, strict=True):
            probabilities = {label.value: probability for label, probability in mood.probabilities}
            out.write(format_line(text, mood.label.value, mood.score, probabilities, as_json=as_json) + "\n")
            count += 1
        out.flush()
    return count


if __name__ == "__main__":
    raise SystemExit(main())
