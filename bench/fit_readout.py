"""Fit the learned mood readout of the bundled model and choose its penalty by cross-domain validation.

Usage (from the project root)::

    python bench/fit_readout.py [--model M] [--threads N] [--write] [--quick]

Data is read in place from ``../shared/data/sentiment/`` (never copied) and from the chat-style
messages written for moodmate under ``bench/data/``. Each message is read once by the model's own mood
read (the same code that serves), keeping its label scores and the outputs of the candidate layers
(``LAYER_FRACTIONS`` of the way through the decoder), each averaged over the tokens read; these features
are kept under ``bench/results/readout-features/`` (keyed by the model, its weights, the mood prompt
and the layers), so a second run only fits.

Per language, every set is held out in turn (the product reviews domain by domain, each of their nine
domains a set of its own): the readout is fitted on the other sets of that language and scored on the
held-out one (macro-recall over three classes where the set has three, else
positive-vs-negative accuracy), for each candidate setting (a layer and a penalty); the held-aside chat
sets are scored by the readout fitted on all the others. The setting with the best mean held-out gain
over plain label scoring, among those where no chat-style set loses and the mean calibration error
grows by at most ``MAX_ECE_GROWTH``, is then fitted on all sets of the language (none qualifying: the
language keeps plain label scoring). ``--write`` saves the readouts as
``bot/model/data/readout-<model>.safetensors``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data" / "sentiment"
CHAT_DIR = ROOT / "bench" / "data"
FEATURE_DIR = ROOT / "bench" / "results" / "readout-features"

logger = logging.getLogger("fit_readout")


@dataclass(frozen=True, slots=True)
class DataSet:
    """One labelled set: where it is, its language, how many rows to read and what groups it."""

    name: str
    path: Path
    language: str
    sample: int | None  # rows read (a fixed stratified sample); None for all
    group_column: str | None = None  # sample evenly over this column's values (e.g. review domains)
    chat: bool = False  # a chat-style set: must not lose under the chosen setting
    fit: bool = True  # False: never fitted on, only scored by the readout fitted on the language's sets
    split_groups: bool = False  # each value of group_column is a set of its own (held out in turn)


SETS: tuple[DataSet, ...] = (
    DataSet("tweeteval_val", DATA_DIR / "tweeteval_sentiment_val.tsv", "en", None),
    DataSet("tweeteval_emotion", DATA_DIR / "tweeteval_emotion_train.tsv", "en", 1500),
    DataSet("chat_en", CHAT_DIR / "chat_en.tsv", "en", None, chat=True),
    DataSet("waimai", DATA_DIR / "waimai_10k.tsv", "zh", 1500),
    DataSet(
        "online_shopping", DATA_DIR / "online_shopping_10_cats.tsv", "zh", 4500, "category", split_groups=True
    ),
    DataSet("chat_zh", CHAT_DIR / "chat_zh.tsv", "zh", None, chat=True),
    DataSet("chat_holdout_en", CHAT_DIR / "chat_holdout_en.tsv", "en", None, chat=True, fit=False),
    DataSet("chat_holdout_zh", CHAT_DIR / "chat_holdout_zh.tsv", "zh", None, chat=True, fit=False),
)


def read_rows(data: DataSet, seed: int = 13) -> list[dict[str, str]]:
    """The set's rows (label, text, and its other columns), a fixed stratified sample where asked."""
    with data.path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [row for row in reader if (row.get("text") or "").strip() and not row["label"].startswith("#")]
    if data.sample is None or data.sample >= len(rows):
        return rows
    strata: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        key = (row.get(data.group_column, "") if data.group_column else "", row["label"])
        strata.setdefault(key, []).append(row)
    rng = random.Random(seed)
    picked: list[dict[str, str]] = []
    if data.group_column:  # the same number from each domain and label, as far as each has
        share = data.sample // len(strata)
        for key in sorted(strata):
            picked.extend(rng.sample(strata[key], min(share, len(strata[key]))))
    else:
        for key in sorted(strata):
            share = round(data.sample * len(strata[key]) / len(rows))
            picked.extend(rng.sample(strata[key], min(share, len(strata[key]))))
    rng.shuffle(picked)
    return picked


#: The candidate layers, as fractions of the decoder's depth (24 layers: 12, 15, 18 and 21).
LAYER_FRACTIONS = (0.5, 0.625, 0.75, 0.875)


def candidate_layers(layer_count: int) -> list[int]:
    from bot.model.readout import layer_at

    return sorted({layer_at(layer_count, fraction) for fraction in LAYER_FRACTIONS})


def feature_key(model, data: DataSet, texts: Sequence[str]) -> str:  # type: ignore[no-untyped-def]
    """What a set's features depend on: the model, how its weights run, its mood prompts, the layers
    kept and the texts."""
    layers = candidate_layers(model.moods.layer_count)
    material = json.dumps(
        [model.identity, model.weights, model.moods.prompt_digests(), layers, data.name, list(texts)],
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def load_or_extract(model, data: DataSet) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The set's features, from the feature cache or read by the mood reader (with progress) and cached.

    Each text is read in the prompt language the bot reads it in (``MoodReader.language_of``), by
    ``read_features``: the label log-probabilities and pooled layer outputs of the serving code itself.
    """
    from tqdm import tqdm

    from bot.model.readout import read_features

    rows = read_rows(data)
    texts = [row["text"] for row in rows]
    path = FEATURE_DIR / f"{data.name}-{feature_key(model, data, texts)}.pt"
    if path.is_file():
        return torch.load(path)
    reader = model.moods
    layers = candidate_layers(reader.layer_count)
    languages = [reader.language_of(text) for text in texts]
    log_probs = torch.zeros(len(texts), 3)
    pooled: dict[int, torch.Tensor] = {}
    started = time.perf_counter()
    with tqdm(total=len(texts), desc=data.name, unit="msg", file=sys.stderr) as bar:
        for language in dict.fromkeys(languages):
            rows_in = [index for index, other in enumerate(languages) if other == language]
            found_log_probs, found_pooled = read_features(
                reader, [texts[index] for index in rows_in], language, layers, progress=bar.update
            )
            log_probs[rows_in] = found_log_probs
            for layer, found in found_pooled.items():
                pooled.setdefault(layer, torch.zeros(len(texts), found.shape[1]))[rows_in] = found
    features = {
        "labels": [row["label"].strip() for row in rows],
        "groups": [row.get(data.group_column, "") if data.group_column else "" for row in rows],
        "languages": languages,
        "log_probs": log_probs,
        "pooled": pooled,
        "seconds": time.perf_counter() - started,
    }
    FEATURE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    return features


def check_features(model, features: dict[str, dict[str, object]], rows: int = 16) -> None:  # type: ignore[no-untyped-def]
    """Read a few messages of each set again and warn where the stored features differ from them (the
    features must be what this model computes as it serves)."""
    from bot.model.readout import read_features

    for data in SETS:
        texts = [row["text"] for row in read_rows(data)][:rows]
        found = features[data.name]
        language = found["languages"][0]
        same = [index for index in range(len(texts)) if found["languages"][index] == language]
        layers = sorted(found["pooled"])
        log_probs, pooled = read_features(model.moods, [texts[index] for index in same], language, layers)
        differences = [float((log_probs - found["log_probs"][same]).abs().max())] + [
            float((pooled[layer] - found["pooled"][layer][same]).abs().max()) for layer in layers
        ]
        if max(differences) > 1e-4:
            print(
                f"WARNING: {data.name}'s stored features differ from this load's by up to "
                f"{max(differences):.3g}: delete bench/results/readout-features/ and read them again",
                file=sys.stderr,
            )


# ---------------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class Candidate:
    """One setting to choose from: the layer read, the penalty, and how the sets are weighed."""

    name: str
    layer: int
    penalty: object  # bot.model.readout.Penalty
    set_weighting: str = "equal"  # "equal": every set the same in all; "rows": by its number of rows
    kind: str = "labels"  # bot.model.readout.KINDS: all three scores, or only positive against negative


def candidates(layers: Sequence[int]) -> list[Candidate]:
    """The settings tried: the identity's parts, then per layer penalties on the weight from weak to
    strong, with and without the per-class scale, and polarity readouts (sets weighed by their rows,
    weaker penalties, the last token's final hidden state instead of a pooled layer: tried before,
    never better)."""
    from bot.model.readout import Penalty

    inf = float("inf")
    found = [Candidate("bias+scale only", layers[0], Penalty(weight=inf, bias=1e-3, scale=1e-3))]
    for layer in layers:
        for weight in (3.0, 1.0, 0.3, 0.1):
            found.append(
                Candidate(f"layer {layer}, weight {weight:g}", layer, Penalty(weight, bias=1e-3, scale=1e-3))
            )
        found.append(
            Candidate(
                f"layer {layer}, weight 1, bias 0.1, no scale", layer, Penalty(1.0, bias=0.1, scale=inf)
            )
        )
        for weight in (1.0, 0.3, 0.1):
            found.append(
                Candidate(
                    f"polarity, layer {layer}, weight {weight:g}",
                    layer,
                    Penalty(weight, bias=1e-3, scale=1e-3),
                    kind="polarity",
                )
            )
    return found


def rows_of(features: dict[str, object], keep: list[int]) -> dict[str, object]:
    """The features of a set's rows ``keep`` (in that order)."""
    return {
        **features,
        "labels": [features["labels"][index] for index in keep],
        "groups": [features["groups"][index] for index in keep],
        "languages": [features["languages"][index] for index in keep],
        "log_probs": features["log_probs"][keep],
        "pooled": {layer: found[keep] for layer, found in features["pooled"].items()},
    }


def in_language(features: dict[str, object], language: str) -> dict[str, object]:
    """The rows of a set that the bot reads in ``language`` (a language's readout sees only those)."""
    keep = [index for index, other in enumerate(features["languages"]) if other == language]
    return features if len(keep) == len(features["languages"]) else rows_of(features, keep)


def split_by_group(name: str, features: dict[str, object]) -> dict[str, dict[str, object]]:
    """One set per value of the set's group column (e.g. the review domains), named ``name:value``."""
    groups = features["groups"]
    return {
        f"{name}:{group}": rows_of(features, [index for index, other in enumerate(groups) if other == group])
        for group in dict.fromkeys(groups)
    }


def language_sets(
    features: dict[str, dict[str, object]], language: str, *, fit: bool
) -> dict[str, dict[str, object]]:
    """The sets of ``language`` (those fitted on, or with ``fit=False`` those only scored), each in
    the rows the bot reads in that language; a ``split_groups`` set as one set per group."""
    found: dict[str, dict[str, object]] = {}
    for data in SETS:
        if data.language != language or data.fit != fit or data.name not in features:
            continue
        rows = in_language(features[data.name], language)
        found.update(split_by_group(data.name, rows) if data.split_groups else {data.name: rows})
    return found


def examples_of(features: dict[str, object], layer: int, weight: float):  # type: ignore[no-untyped-def]
    from bot.model.readout import make_examples

    return make_examples(
        features["log_probs"], features["pooled"][layer], features["labels"], layer=layer, set_weight=weight
    )


def set_weights(sets: dict[str, dict[str, object]], how: str) -> dict[str, float]:
    if how == "rows":
        return {name: float(len(features["labels"])) for name, features in sets.items()}
    return dict.fromkeys(sets, 1.0)


def evaluate(readout, features: dict[str, object]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    examples = examples_of(features, readout.layer, 1.0)
    return evaluate_log_probs(readout.apply(examples.log_probs, examples.hidden), examples)


def evaluate_log_probs(fitted: torch.Tensor, examples) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Plain label scoring and ``fitted`` (the readout's log-probabilities) on one set's examples."""
    from bot.model.readout import calibration_error, set_score

    plain = torch.log_softmax(examples.log_probs, dim=-1)
    return {
        "plain": set_score(plain, examples.labels),
        "readout": set_score(fitted, examples.labels),
        "ece_plain": calibration_error(plain, examples.labels),
        "ece_readout": calibration_error(fitted, examples.labels),
    }


def fit_on(sets: dict[str, dict[str, object]], candidate: Candidate):  # type: ignore[no-untyped-def]
    from bot.model.readout import Examples, fit_readout

    weights = set_weights(sets, candidate.set_weighting)
    train = Examples.concat(
        [examples_of(features, candidate.layer, weights[name]) for name, features in sets.items()]
    )
    return fit_readout(train, candidate.penalty, kind=candidate.kind)


def held_out_figures(
    sets: dict[str, dict[str, object]], report: dict[str, dict[str, object]], candidate: Candidate
) -> dict[str, dict[str, float]]:
    """Each of ``sets`` scored by the readout fitted on the language's other sets, and each of ``report``
    by the one fitted on all of ``sets`` (plain label scoring beside each)."""
    figures = {}
    for held in sets:
        readout = fit_on({name: found for name, found in sets.items() if name != held}, candidate)
        figures[held] = evaluate(readout, sets[held])
    if report:
        readout = fit_on(sets, candidate)
        for name, found in report.items():
            figures[name] = evaluate(readout, found)
    for name, row in figures.items():
        row["n"] = len({**sets, **report}[name]["labels"])
    return figures


def in_domain_figures(
    sets: dict[str, dict[str, object]], candidate: Candidate, folds: int = 5
) -> dict[str, dict[str, float]]:
    """Each set scored in ``folds`` folds by readouts fitted on the other sets and the set's other folds
    (what the readout does on new messages of a kind it was fitted on)."""
    from bot.model.readout import Examples, fit_readout, fold_indices

    figures = {}
    weights = set_weights(sets, candidate.set_weighting)
    for name, found in sets.items():
        whole = examples_of(found, candidate.layer, weights[name])
        others = [
            examples_of(other, candidate.layer, weights[key]) for key, other in sets.items() if key != name
        ]
        fitted = torch.empty_like(whole.log_probs)
        for rows in fold_indices(whole.labels, folds):
            keep = torch.ones(len(whole), dtype=torch.bool)
            keep[rows] = False
            part = whole.subset(torch.nonzero(keep)[:, 0])
            readout = fit_readout(Examples.concat([*others, part]), candidate.penalty, kind=candidate.kind)
            fitted[rows] = readout.apply(whole.log_probs[rows], whole.hidden[rows])
        figures[name] = evaluate_log_probs(fitted, examples_of(found, candidate.layer, 1.0))
        figures[name]["n"] = len(found["labels"])
    return figures


#: How much a candidate may raise the mean expected calibration error of the held-out sets.
MAX_ECE_GROWTH = 0.01


def choose(
    results: dict[str, dict[str, dict[str, float]]], chat_sets: Sequence[str]
) -> tuple[str | None, list[str]]:
    """The candidate with the best mean held-out gain among those where no chat-style set loses and the
    mean calibration error grows by at most ``MAX_ECE_GROWTH``; None where none gains (the language then
    keeps plain label scoring)."""
    notes = []
    best, best_gain = None, 0.0
    for name, figures in results.items():
        gains = {held: row["readout"] - row["plain"] for held, row in figures.items()}
        mean_gain = sum(gains.values()) / len(gains)
        ece_growth = sum(row["ece_readout"] - row["ece_plain"] for row in figures.values()) / len(figures)
        faults = (
            [] if all(gains[held] >= 0 for held in chat_sets if held in gains) else ["a chat-style set loses"]
        )
        if ece_growth > MAX_ECE_GROWTH:
            faults.append(f"mean ECE {ece_growth:+.3f}")
        notes.append(f"{name}: mean gain {mean_gain:+.4f}" + (f" ({'; '.join(faults)})" if faults else ""))
        if not faults and mean_gain > best_gain:
            best, best_gain = name, mean_gain
    return best, notes


def print_figures(title: str, figures: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("set | n | plain | readout | gain | ECE plain | ECE readout")
    for held, row in figures.items():
        print(
            f"{held} | {row.get('n', '-')} | {row['plain']:.3f} | {row['readout']:.3f} | "
            f"{row['readout'] - row['plain']:+.3f} | {row['ece_plain']:.3f} | {row['ece_readout']:.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="MOODMATE_MODEL override")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--write", action="store_true", help="save the fitted readout into the package")
    parser.add_argument(
        "--only", default=None, help="the candidate names to try, separated by semicolons (names hold commas)"
    )
    parser.add_argument(
        "--cached", action="store_true", help="only the features already read (no model load; no --write)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cached:
        torch.set_num_threads(args.threads or 1)
        features = {}
        for data in SETS:
            found = sorted(FEATURE_DIR.glob(f"{data.name}-*.pt"), key=lambda path: path.stat().st_mtime)
            if found:
                features[data.name] = torch.load(found[-1])
        validate(features, args.only)
        return 0

    from bot.bootstrap import model_options
    from bot.model.loader import load_model
    from bot.model.readout import save_readout
    from bot.settings import Settings

    settings = Settings(_env_file=None, threads=args.threads, **({"model": args.model} if args.model else {}))
    model = load_model(model_options(settings), progress=True)
    features = {data.name: load_or_extract(model, data) for data in SETS}
    check_features(model, features)
    readouts, info = validate(features, args.only)
    if args.write:
        from bot.model.readout import packaged_readout_path

        path = packaged_readout_path(model.name)
        save_readout(
            path,
            readouts,
            model=model.identity,
            prompts=model.moods.prompt_digests(),
            info={"fitted_by": "bench/fit_readout.py", **info},
        )
        print(f"\nwrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
    return 0


def validate(features: dict[str, dict[str, object]], only: str | None):  # type: ignore[no-untyped-def]
    """Choose each language's setting by held-out sets, print the figures and fit it on all its sets."""
    for name, found in features.items():
        print(f"{name}: {len(found['labels'])} messages ({found['seconds']:.0f} s to read)", file=sys.stderr)
    tried = candidates(sorted(next(iter(features.values()))["pooled"]))
    if only:
        wanted = {name.strip() for name in only.split(";")}
        tried = [candidate for candidate in tried if candidate.name in wanted]
    by_name = {candidate.name: candidate for candidate in tried}
    readouts, info = {}, {}
    for language in dict.fromkeys(data.language for data in SETS):
        sets = language_sets(features, language, fit=True)
        report = language_sets(features, language, fit=False)
        chat_sets = [data.name for data in SETS if data.language == language and data.chat]
        if len(sets) < 2:
            continue
        results = {}
        for candidate in tried:
            results[candidate.name] = held_out_figures(sets, report, candidate)
            print_figures(f"[{language}] {candidate.name}, each set held out", results[candidate.name])
        chosen, notes = choose(results, chat_sets)
        print(f"\n[{language}] " + "\n".join(notes))
        print(f"[{language}] chosen: {chosen or 'none (plain label scoring)'}")
        if chosen is None:
            continue
        candidate = by_name[chosen]
        readouts[language] = fit_on(sets, candidate)
        in_domain = in_domain_figures(sets, candidate)
        print_figures(f"[{language}] {chosen}, 5-fold within each set (the other sets always in)", in_domain)
        info[language] = {
            "setting": chosen,
            "layer": candidate.layer,
            "penalty": candidate.penalty.describe(),
            "kind": candidate.kind,
            "set_weighting": candidate.set_weighting,
            "sets": {name: len(found["labels"]) for name, found in sets.items()},
            "held_out": {
                held: {key: round(value, 4) for key, value in row.items()}
                for held, row in results[chosen].items()
            },
            "in_domain": {
                name: {key: round(value, 4) for key, value in row.items()} for name, row in in_domain.items()
            },
        }
        print_figures(
            f"[{language}] the shipped readout on its training sets and the held-aside chat set",
            {name: evaluate(readouts[language], found) for name, found in {**sets, **report}.items()},
        )
    return readouts, info


if __name__ == "__main__":
    raise SystemExit(main())
