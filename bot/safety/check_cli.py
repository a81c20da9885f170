"""``moodmate crisis-check [FILE ...]``: the crisis detector's recall and look-alike false-positive
rate on labelled files, per part and language (the shipped set by default)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.safety.labelled import LabelledFileError, evaluate, load, load_default, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="*", type=Path, metavar="FILE", help="labelled files (default: the shipped set)"
    )
    parser.add_argument(
        "--errors",
        action="append",
        default=[],
        metavar="PART",
        help="also list the misses and false alarms of PART (a file's stem, e.g. tune)",
    )


def run(files: Sequence[Path], errors: Sequence[str] = ()) -> int:
    """Print the table; 2 with one sentence when a file cannot be read."""
    try:
        examples = [example for path in files for example in load(path)] if files else load_default()
    except (OSError, UnicodeDecodeError, LabelledFileError) as error:
        print(f"moodmate: {error}", file=sys.stderr)
        return 2
    print(report(evaluate(examples), show_errors=errors))
    return 0
