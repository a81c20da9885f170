"""The learned mood readout: a small per-language correction to the label scores of a mood read.

A mood read ends in the three label log-probabilities ``z``; ``h`` is the output of one of the
decoder's layers in that same forward pass (the readout's ``layer``), averaged over the tokens read
after the prompt's prefix (the message and the prompt's closing tokens). A language's readout corrects
the label scores as::

    log_softmax(scale * z + bias + weight @ features(h))        features(h) = (h - mean) * inv_std

with ``scale`` one per label (a per-class temperature), ``bias`` and ``weight`` (``[3, hidden]``). Fitting
penalises ``weight``, ``bias`` and ``scale - 1`` towards zero, so with no data (or an infinite penalty)
it is the identity: ``scale`` 1, the rest 0, which computes exactly the plain label scores. Sets with
three labels are fitted with the three-class cross-entropy, positive/negative-only sets with the
two-class one (the neutral score is left to the three-class data and the penalty).

A ``polarity`` readout (fitted on positive and negative rows alone) keeps the plain probability of
neutral and uses the corrected scores only to split the rest: positive gets ``(1 - p_neutral) *
sigmoid(s_positive - s_negative)``. Reviews and other positive/negative-only data can then sharpen
which way a message leans without moving what reads as neutral in chat.

The weights are kept in a safetensors file whose metadata names the model they were fitted for and,
per language, a digest of the mood prompt's tokens; a file for another model or prompt is not used
(the mood read falls back to plain label scoring, with one log line).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch

from bot.model.mood_prompt import LABELS

logger = logging.getLogger(__name__)

#: The file format's name and version, in the metadata of every readout file (version 1 files read the
#: last token's final hidden state and are not used).
FORMAT = "moodmate-readout/2"

#: Where a readout reads by default (``moodmate tune-mood``): the layer this far through the decoder,
#: chosen for the bundled model's English readout by cross-domain validation (``bench/fit_readout.py``).
DEFAULT_LAYER_FRACTION = 0.5


def row_products(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows [n, k] @ weight.T`` (``weight [m, k]``), each row's products rounded as they are for that row
    alone: a matrix product's rounding depends on how many rows it multiplies, so a mood read batched
    with others would differ from the same read alone by about 1e-6."""
    return (rows.unsqueeze(1) * weight).sum(dim=-1)


def default_readout_layer(layer_count: int) -> int:
    """The layer (numbered from 1, below the last) ``DEFAULT_LAYER_FRACTION`` through ``layer_count``."""
    return layer_at(layer_count, DEFAULT_LAYER_FRACTION)


def layer_at(layer_count: int, fraction: float) -> int:
    """The layer ``fraction`` of the way through a decoder of ``layer_count`` layers (1 … count - 1)."""
    return max(1, min(layer_count - 1, round(fraction * layer_count)))


#: Index of each label in score rows (``LABELS`` order).
LABEL_INDEX: dict[str, int] = {label.value: index for index, label in enumerate(LABELS)}
POSITIVE, NEUTRAL, NEGATIVE = (LABEL_INDEX[name] for name in ("positive", "neutral", "negative"))

#: What a readout corrects: ``labels``, all three scores; ``polarity``, only how the probability that
#: is not neutral splits between positive and negative (see the module docstring).
KINDS = ("labels", "polarity")


def prompt_digest(
    prefix_ids: Sequence[int], suffix_ids: Sequence[int], label_groups: Sequence[Sequence[int]]
) -> str:
    """A digest of one language's mood prompt as the model runs it: its tokens and its label rows."""
    material = json.dumps([list(prefix_ids), list(suffix_ids), [list(group) for group in label_groups]])
    return hashlib.sha256(material.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class LanguageReadout:
    """One language's correction of the label log-probabilities (see the module docstring)."""

    scale: torch.Tensor  # [3]
    bias: torch.Tensor  # [3]
    weight: torch.Tensor  # [3, hidden]
    mean: torch.Tensor  # [hidden]
    inv_std: torch.Tensor  # [hidden]
    layer: int  # the decoder layer (from 1) whose output, averaged over the read tokens, is ``h``
    kind: str = "labels"  # one of KINDS

    @classmethod
    def identity(cls, hidden_size: int, layer: int) -> LanguageReadout:
        """The readout that changes nothing (what fitting starts from and is penalised towards)."""
        return cls(
            scale=torch.ones(len(LABELS)),
            bias=torch.zeros(len(LABELS)),
            weight=torch.zeros(len(LABELS), hidden_size),
            mean=torch.zeros(hidden_size),
            inv_std=torch.ones(hidden_size),
            layer=layer,
        )

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The standardised hidden states ``[n, hidden]`` the weight multiplies."""
        return (hidden.float() - self.mean) * self.inv_std

    def scores(self, log_probs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The corrected label scores ``[n, 3]`` of ``log_probs [n, 3]`` (a ``labels`` readout's not yet
        normalised; a ``polarity`` readout's are log-probabilities)."""
        corrected = log_probs * self.scale + self.bias + row_products(self.features(hidden), self.weight)
        if self.kind == "labels":
            return corrected
        plain = torch.log_softmax(log_probs, dim=-1)
        leaning = corrected[:, POSITIVE] - corrected[:, NEGATIVE]
        not_neutral = torch.log(-torch.expm1(plain[:, NEUTRAL]))
        split = plain.clone()
        split[:, POSITIVE] = not_neutral + torch.nn.functional.logsigmoid(leaning)
        split[:, NEGATIVE] = not_neutral + torch.nn.functional.logsigmoid(-leaning)
        return split

    def apply(self, log_probs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Corrected label log-probabilities ``[n, 3]``; the identity readout returns ``log_softmax`` of
        ``log_probs`` computed exactly as plain label scoring does."""
        return torch.log_softmax(self.scores(log_probs, hidden), dim=-1)

    def size(self) -> int:
        """How many fitted numbers it has."""
        return self.scale.numel() + self.bias.numel() + self.weight.numel()


# ---------------------------------------------------------------------------------- files


@dataclass(frozen=True, slots=True)
class ReadoutFile:
    """The readouts of one file, by language, with what they were fitted for."""

    languages: dict[str, LanguageReadout]
    model: str
    prompts: dict[str, str]
    info: dict[str, object] = field(default_factory=dict)


def save_readout(
    path: Path,
    readouts: Mapping[str, LanguageReadout],
    *,
    model: str,
    prompts: Mapping[str, str],
    info: Mapping[str, object] | None = None,
) -> None:
    """Write ``readouts`` (by language) to ``path`` atomically, keyed to ``model`` and each language's
    prompt digest (``prompts``); ``info`` (JSON) says how they were fitted."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for language, readout in readouts.items():
        for name in ("scale", "bias", "weight", "mean", "inv_std"):
            tensors[f"{language}.{name}"] = getattr(readout, name).float().contiguous()
    metadata = {
        "format": FORMAT,
        "model": model,
        "languages": ",".join(readouts),
        "info": json.dumps(dict(info or {}), ensure_ascii=False),
        **{f"prompt.{language}": prompts[language] for language in readouts},
        **{f"layer.{language}": str(readout.layer) for language, readout in readouts.items()},
        **{f"kind.{language}": readout.kind for language, readout in readouts.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.replace(path)


def read_readout_file(path: Path) -> ReadoutFile:
    """Everything in a readout file, unchecked; raises ``ValueError`` for a file that is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise ValueError(f"unreadable ({error})") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    languages: dict[str, LanguageReadout] = {}
    for language in filter(None, metadata.get("languages", "").split(",")):
        try:
            parts = {
                name: tensors[f"{language}.{name}"] for name in ("scale", "bias", "weight", "mean", "inv_std")
            }
        except KeyError as error:
            raise ValueError(f"the {language} readout lacks {error.args[0]}") from error
        layer = metadata.get(f"layer.{language}", "")
        if not layer.isdigit() or int(layer) < 1:
            raise ValueError(f"the {language} readout names no layer")
        kind = metadata.get(f"kind.{language}", "labels")
        if kind not in KINDS:
            raise ValueError(f"the {language} readout is of an unknown kind ({kind})")
        readout = LanguageReadout(**parts, layer=int(layer), kind=kind)
        hidden = readout.hidden_size
        shapes = {
            "scale": (len(LABELS),),
            "bias": (len(LABELS),),
            "weight": (len(LABELS), hidden),
            "mean": (hidden,),
            "inv_std": (hidden,),
        }
        if any(tuple(parts[name].shape) != shape for name, shape in shapes.items()):
            raise ValueError(f"the {language} readout's tensors do not fit together")
        languages[language] = readout
    try:
        info = json.loads(metadata.get("info", "{}"))
    except ValueError:
        info = {}
    prompts = {language: metadata.get(f"prompt.{language}", "") for language in languages}
    return ReadoutFile(languages, metadata.get("model", ""), prompts, info if isinstance(info, dict) else {})


def load_readout(
    path: Path, *, model: str, prompts: Mapping[str, str], hidden_size: int, layer_count: int
) -> dict[str, LanguageReadout]:
    """The readouts in ``path`` that fit this model and its prompts, by language.

    A missing file gives none, silently; a file for another model, another prompt, another hidden size
    or a layer the model lacks gives none for what does not fit, with one log line saying why (plain
    label scoring is used).
    """
    if not path.is_file():
        return {}
    try:
        found = read_readout_file(path)
    except ValueError as error:
        logger.warning("Mood readout %s not used, plain label scores instead: %s", path, error)
        return {}
    if found.model != model:
        logger.warning(
            "Mood readout %s not used, plain label scores instead: fitted for another model (%s)",
            path,
            found.model,
        )
        return {}
    usable: dict[str, LanguageReadout] = {}
    stale: list[str] = []
    for language, readout in found.languages.items():
        if (
            prompts.get(language) == found.prompts.get(language)
            and readout.hidden_size == hidden_size
            and readout.layer < layer_count
        ):
            usable[language] = readout
        else:
            stale.append(language)
    if stale:
        logger.warning(
            "Mood readout %s not used for %s, plain label scores there: fitted for another mood prompt "
            "hidden size or layers",
            path,
            ", ".join(stale),
        )
    return usable


# ---------------------------------------------------------------------------------- fitting


@dataclass(frozen=True, slots=True)
class Penalty:
    """How strongly fitting pulls each part of a readout back to the identity (L2, per mean example);
    ``math.inf`` keeps that part at the identity."""

    weight: float = 0.1
    bias: float = 1e-3
    scale: float = 1e-3

    def describe(self) -> dict[str, float]:
        return {"weight": self.weight, "bias": self.bias, "scale": self.scale}


#: Used where there is nothing to choose a penalty by (``moodmate tune-mood``): the one chosen for the
#: bundled model's English readout by cross-domain validation (``bench/fit_readout.py``).
DEFAULT_PENALTY = Penalty()


@dataclass(frozen=True, slots=True)
class Examples:
    """Fitting data of one language: label log-probabilities, hidden states (``layer``'s, averaged over
    the read tokens), labels and per-row weights.

    ``labels`` are ``LABEL_INDEX`` values; ``two_class`` rows (from positive/negative-only sets) are
    fitted with the two-class loss. ``weights`` sum to anything; fitting normalises them.
    """

    log_probs: torch.Tensor  # [n, 3]
    hidden: torch.Tensor  # [n, hidden]
    labels: torch.Tensor  # [n] long
    two_class: torch.Tensor  # [n] bool
    weights: torch.Tensor  # [n] float
    layer: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: torch.Tensor) -> Examples:
        return Examples(
            self.log_probs[rows],
            self.hidden[rows],
            self.labels[rows],
            self.two_class[rows],
            self.weights[rows],
            self.layer,
        )

    @staticmethod
    def concat(parts: Sequence[Examples]) -> Examples:
        layers = {part.layer for part in parts}
        if len(layers) != 1:
            raise ValueError(f"examples of one layer only, not {sorted(layers)}")
        return Examples(
            torch.cat([part.log_probs for part in parts]),
            torch.cat([part.hidden for part in parts]),
            torch.cat([part.labels for part in parts]),
            torch.cat([part.two_class for part in parts]),
            torch.cat([part.weights for part in parts]),
            layers.pop(),
        )


def make_examples(
    log_probs: torch.Tensor,
    hidden: torch.Tensor,
    labels: Sequence[str],
    *,
    layer: int,
    set_weight: float = 1.0,
) -> Examples:
    """One labelled set's examples, class-balanced: each label present weighs the same, the set as a whole
    ``set_weight``; a set without neutral rows is fitted with the two-class loss."""
    index = torch.tensor([LABEL_INDEX[label] for label in labels], dtype=torch.long)
    present = sorted(set(index.tolist()))
    counts = torch.bincount(index, minlength=len(LABELS)).float()
    weights = set_weight / (len(present) * counts[index])
    two_class = torch.full((len(labels),), NEUTRAL not in present, dtype=torch.bool)
    return Examples(log_probs.float(), hidden.float(), index, two_class, weights, layer)


def readout_loss(readout_scores: torch.Tensor, labels: torch.Tensor, two_class: torch.Tensor) -> torch.Tensor:
    """Per-row loss: three-class cross-entropy, or for ``two_class`` rows the cross-entropy of positive
    against negative alone (the neutral score does not enter)."""
    three = -torch.log_softmax(readout_scores, dim=-1).gather(1, labels[:, None])[:, 0]
    pair = readout_scores[:, [POSITIVE, NEGATIVE]]
    pair_labels = (labels == NEGATIVE).long()
    two = -torch.log_softmax(pair, dim=-1).gather(1, pair_labels[:, None])[:, 0]
    return torch.where(two_class, two, three)


def fit_readout(
    examples: Examples,
    penalty: Penalty = DEFAULT_PENALTY,
    *,
    kind: str = "labels",
    max_iterations: int = 200,
) -> LanguageReadout:
    """Fit one language's readout of ``kind`` to ``examples`` (convex: L-BFGS to convergence, in
    float64); a ``polarity`` readout is fitted on the positive and negative rows alone, with the
    two-class loss."""
    if kind not in KINDS:
        raise ValueError(f"a readout's kind is one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "polarity":
        leaning = torch.nonzero(examples.labels != NEUTRAL)[:, 0]
        if not len(leaning):
            raise ValueError("a polarity readout is fitted on positive and negative rows, and there are none")
        examples = examples.subset(leaning)
        examples = replace(examples, two_class=torch.ones_like(examples.two_class))
    hidden = examples.hidden.double()
    mean = hidden.mean(dim=0)
    std = hidden.std(dim=0, unbiased=False)
    inv_std = torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.zeros_like(std))
    features = (hidden - mean) * inv_std
    log_probs = examples.log_probs.double()
    weights = examples.weights.double() / examples.weights.double().sum()
    classes = len(LABELS)
    scale = torch.ones(classes, dtype=torch.float64, requires_grad=math.isfinite(penalty.scale))
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=math.isfinite(penalty.bias))
    weight = torch.zeros(
        classes, features.shape[1], dtype=torch.float64, requires_grad=math.isfinite(penalty.weight)
    )
    fitted = [part for part in (scale, bias, weight) if part.requires_grad]
    if not fitted:
        return LanguageReadout(
            scale.detach().float(),
            bias.detach().float(),
            weight.detach().float(),
            mean.float(),
            inv_std.float(),
            examples.layer,
            kind,
        )
    optimizer = torch.optim.LBFGS(
        fitted,
        lr=1.0,
        max_iter=max_iterations,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scores = log_probs * scale + bias + features @ weight.T
        loss = (readout_loss(scores, examples.labels, examples.two_class) * weights).sum()
        for part, strength, anchor in (
            (weight, penalty.weight, 0.0),
            (bias, penalty.bias, 0.0),
            (scale, penalty.scale, 1.0),
        ):
            if part.requires_grad:
                loss = loss + strength * (part - anchor).pow(2).sum()
        for part, gradient in zip(fitted, torch.autograd.grad(loss, fitted), strict=True):
            part.grad = gradient
        return loss

    step: Callable[[Callable[[], torch.Tensor]], object] = optimizer.step  # torch leaves it unannotated
    with torch.enable_grad():
        step(closure)
    return LanguageReadout(
        scale=scale.detach().float(),
        bias=bias.detach().float(),
        weight=weight.detach().float(),
        mean=mean.float(),
        inv_std=inv_std.float(),
        layer=examples.layer,
        kind=kind,
    )


# ---------------------------------------------------------------------------------- figures


def predicted(log_probs: torch.Tensor, *, two_class: bool = False) -> torch.Tensor:
    """The label each row answers; with ``two_class`` a neutral answer counts as the likelier of the two."""
    answers = log_probs.argmax(dim=-1)
    if two_class:
        pair = torch.where(log_probs[:, POSITIVE] >= log_probs[:, NEGATIVE], POSITIVE, NEGATIVE)
        answers = torch.where(answers == NEUTRAL, pair, answers)
    return answers


def macro_recall(labels: torch.Tensor, answers: torch.Tensor) -> float:
    """Mean over the labels present of the share of their rows answered right."""
    recalls = [
        float((answers[labels == label] == label).float().mean())
        for label in range(len(LABELS))
        if bool((labels == label).any())
    ]
    return sum(recalls) / len(recalls) if recalls else math.nan


def set_score(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """How a set is scored: macro-recall over three classes where it has neutral rows, else
    positive-vs-negative accuracy (a neutral answer counting as the likelier of the two)."""
    if bool((labels == NEUTRAL).any()):
        return macro_recall(labels, predicted(log_probs))
    return float((predicted(log_probs, two_class=True) == labels).float().mean())


def calibration_error(log_probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error of the top label's probability over ``bins`` equal-width bins."""
    probabilities = log_probs.exp()
    confidence, answers = probabilities.max(dim=-1)
    right = (answers == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)
    error = 0.0
    for index in range(bins):
        members = which == index
        if bool(members.any()):
            share = float(members.float().mean())
            error += share * abs(float(confidence[members].mean()) - float(right[members].mean()))
    return error


def fold_indices(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """``folds`` disjoint row sets, each label spread evenly over them (a fixed shuffle)."""
    generator = torch.Generator().manual_seed(seed)
    assigned = torch.empty(len(labels), dtype=torch.long)
    for label in range(len(LABELS)):
        rows = torch.nonzero(labels == label)[:, 0]
        rows = rows[torch.randperm(len(rows), generator=generator)]
        assigned[rows] = torch.arange(len(rows)) % folds
    return [torch.nonzero(assigned == fold)[:, 0] for fold in range(folds)]


def cross_validated(
    examples: Examples,
    penalty: Penalty = DEFAULT_PENALTY,
    *,
    folds: int = 5,
    kind: str = "labels",
    progress: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's plain and readout log-probabilities, the readout fitted without the row's fold.

    ``progress`` is called once per fold fitted.
    """
    plain = torch.log_softmax(examples.log_probs, dim=-1)
    fitted = torch.empty_like(plain)
    for rows in fold_indices(examples.labels, folds):
        keep = torch.ones(len(examples), dtype=torch.bool)
        keep[rows] = False
        readout = fit_readout(examples.subset(torch.nonzero(keep)[:, 0]), penalty, kind=kind)
        fitted[rows] = readout.apply(examples.log_probs[rows], examples.hidden[rows])
        if progress is not None:
            progress()
    return plain, fitted


# ---------------------------------------------------------------------------------- where, and reading


#: The shipped readouts: ``readout-<model name>.safetensors`` in this package's data directory.
PACKAGED_DIR = Path(__file__).resolve().parent / "data"


def _file_name(model_name: str) -> str:
    safe = "".join(char if char.isalnum() or char in "._-" else "-" for char in model_name)[:80]
    return f"readout-{safe or 'model'}.safetensors"


def packaged_readout_path(model_name: str) -> Path:
    """Where the package keeps the readout fitted for ``model_name`` (there may be none)."""
    return PACKAGED_DIR / _file_name(model_name)


def tuned_readout_path(cache_dir: Path, model_name: str) -> Path:
    """Where ``moodmate tune-mood`` saves the readout it fits for ``model_name`` (it takes precedence)."""
    return Path(cache_dir).expanduser() / "readouts" / _file_name(model_name)


class _Scores(Protocol):
    @property
    def log_probs(self) -> torch.Tensor: ...
    @property
    def pooled(self) -> Mapping[int, torch.Tensor]: ...


class ScoringReader(Protocol):
    """What ``read_features`` needs of a mood reader (``bot.model.mood_reader.MoodReader``)."""

    @property
    def lock(self) -> AbstractContextManager[object]: ...
    @property
    def batch_size(self) -> int: ...
    def token_ids(self, text: str, language: str) -> list[int]: ...
    def label_scores(
        self, sequences: Sequence[list[int]], language: str, layers: Sequence[int] = ()
    ) -> _Scores: ...


def read_features(
    reader: ScoringReader,
    texts: Sequence[str],
    language: str,
    layers: Sequence[int],
    *,
    progress: Callable[[int], object] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Label log-probabilities ``[n, 3]`` of ``texts`` and each of ``layers``' outputs averaged over
    the read tokens (``{layer: [n, hidden]}``), read with ``language``'s prompt by the mood reader's
    own scoring (``MoodReader.label_scores``, as it serves), in its length-sorted batches; ``progress``
    is called with the number of texts each batch read."""
    sequences = [reader.token_ids(text, language) for text in texts]
    order = sorted(range(len(texts)), key=lambda index: len(sequences[index]))
    log_probs = torch.zeros(len(texts), len(LABELS))
    pooled: dict[int, torch.Tensor] = {}
    with reader.lock:
        for start in range(0, len(order), reader.batch_size):
            chunk = order[start : start + reader.batch_size]
            scores = reader.label_scores([sequences[index] for index in chunk], language, layers)
            log_probs[chunk] = scores.log_probs
            for layer in layers:
                found = scores.pooled[layer]
                pooled.setdefault(layer, torch.zeros(len(texts), found.shape[-1]))[chunk] = found.float()
            if progress is not None:
                progress(len(chunk))
    return log_probs, pooled
