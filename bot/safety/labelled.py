"""Labelled crisis messages (tab-separated files) and the detector's figures on them.

A file's rows: ``label<TAB>lang<TAB>kind<TAB>text[<TAB>context]``, where ``label`` is ``crisis`` or
``ok`` (a look-alike), ``lang`` is ``en``, ``zh`` or ``mix``, and ``context`` holds the user's earlier
messages in the chat, ``" || "``-separated, oldest first. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.safety.detector import is_crisis

#: The labelled set shipped with the tests: a tuning part and a held-aside part tuned on nothing.
DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "crisis"
PARTS: tuple[str, ...] = ("tune", "heldout")

Detector = Callable[[str, Sequence[str]], bool]


@dataclass(frozen=True, slots=True)
class Example:
    label: str
    lang: str
    kind: str
    text: str
    context: tuple[str, ...] = ()
    part: str = ""

    @property
    def crisis(self) -> bool:
        return self.label == "crisis"


class LabelledFileError(ValueError):
    """A labelled file has a row that cannot be read."""


def load(path: Path, part: str | None = None) -> list[Example]:
    """The examples in ``path`` (``part`` defaults to the file's stem)."""
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) not in (4, 5) or fields[0] not in ("crisis", "ok"):
            raise LabelledFileError(
                f"{path}:{number}: expected label (crisis|ok), lang, kind, text[, context] separated by tabs"
            )
        earlier = fields[4].split("||") if len(fields) == 5 else []
        context = tuple(part.strip() for part in earlier if part.strip())
        examples.append(Example(fields[0], fields[1], fields[2], fields[3], context, part or path.stem))
    return examples


def load_default() -> list[Example]:
    """Both parts of the shipped set."""
    return [example for part in PARTS for example in load(DATA_DIR / f"{part}.tsv", part)]


@dataclass
class Cell:
    """Figures for one group of examples."""

    crisis: int = 0
    caught: int = 0
    lookalikes: int = 0
    flagged: int = 0
    misses: list[Example] = field(default_factory=list)
    false_alarms: list[Example] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.caught / self.crisis if self.crisis else None

    @property
    def false_positive_rate(self) -> float | None:
        return self.flagged / self.lookalikes if self.lookalikes else None


def evaluate(examples: Iterable[Example], detector: Detector = is_crisis) -> dict[tuple[str, str], Cell]:
    """Figures per (part, language), plus ``(part, "all")`` and ``("all", "all")``."""
    cells: dict[tuple[str, str], Cell] = {}
    for example in examples:
        flagged = detector(example.text, example.context)
        for key in ((example.part, example.lang), (example.part, "all"), ("all", "all")):
            cell = cells.setdefault(key, Cell())
            if example.crisis:
                cell.crisis += 1
                cell.caught += flagged
                if not flagged:
                    cell.misses.append(example)
            else:
                cell.lookalikes += 1
                cell.flagged += flagged
                if flagged:
                    cell.false_alarms.append(example)
    return cells


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(cells: dict[tuple[str, str], Cell], *, show_errors: Sequence[str] = ()) -> str:
    """A table of recall and look-alike false-positive rate; misses and false alarms of the parts in
    ``show_errors`` are listed after it."""
    lines = ["part\tlang\tcrisis\trecall\tlook-alikes\tflagged\tfalse-positive rate"]
    for (part, lang), cell in sorted(cells.items(), key=lambda item: (item[0][0] == "all", item[0])):
        lines.append(
            f"{part}\t{lang}\t{cell.crisis}\t{_figure(cell.recall)}\t{cell.lookalikes}\t{cell.flagged}\t"
            f"{_figure(cell.false_positive_rate)}"
        )
    for part in show_errors:
        errors = cells.get((part, "all"))
        if errors is None:
            continue
        for example in errors.misses:
            lines.append(f"missed\t{part}\t{example.lang}\t{example.kind}\t{example.text}")
        for example in errors.false_alarms:
            lines.append(f"flagged\t{part}\t{example.lang}\t{example.kind}\t{example.text}")
    return "\n".join(lines)
