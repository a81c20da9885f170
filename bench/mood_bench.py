"""Benchmark moodmate's mood reads and replies against two simpler prompting methods, in one run.

Usage (from the project root)::

    python bench/mood_bench.py [--full] [--sample N] [--model M] [--json PATH] [--methods abc]

Data is read in place from ``../shared/data/sentiment/`` relative to the project root (never copied):
``tweeteval_sentiment_val.tsv`` (3 classes, scored by macro-averaged recall, and the confidences by their
expected calibration error) and ``waimai_10k.tsv``
(Chinese, 2 classes, scored by accuracy; a ``neutral`` answer counts as the more likely of positive and
negative when the method has probabilities, and as wrong otherwise).

Methods (letters for ``--methods``):
  (a) generate-and-search on the plain float32 model (float32 weights, transformers' own SDPA
      attention), as the common tutorial does: zero-shot instruction, greedy-generate a few tokens,
      search them for a label;
  (b) zero-shot logits on the plain float32 model: one full forward pass over the zero-shot prompt per
      message, compare the three label-token logits;
  (i) (b) again, but on moodmate's int8 weights (shows how much of the speed-up is the weights alone);
  (f) moodmate's method on the plain float32 model (the accuracy the int8 weights are measured against);
  (c) moodmate: ``LanguageModel.classify`` as the bot runs it (few-shot prefix KV cache, label rows only,
      batched, int8 weights).
The default is ``abc``; the speed-up column compares every row's single-message p50 with (b)'s. Read
times are measured side by side (each message read by every method in turn), after the accuracy runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA_DIR = ROOT.parent / "shared" / "data" / "sentiment"
LABELS = ("positive", "neutral", "negative")
ZERO_SHOT_INSTRUCTION = (
    "Classify the sentiment of the user's message. Answer with one word: positive, neutral or negative."
)
CHATS: tuple[tuple[str, ...], ...] = (
    (
        "I had a rough day at work, my boss yelled at me in front of everyone.",
        "Thanks. Any idea how to calm down?",
    ),
    ("I just adopted a puppy! She's so tiny and cute.", "What should I name her?"),
    ("我今天考试没考好，有点难过。", "你觉得我应该怎么调整心态？"),
    ("周末想去爬山，你有什么建议吗？", "那需要带些什么东西？"),
)


def rss_mb() -> float:
    """Resident set size of this process in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def read_tsv(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row["label"].strip(), row["text"]) for row in reader if row.get("text")]


def stratified_sample(rows: list[tuple[str, str]], size: int | None, seed: int = 13) -> list[tuple[str, str]]:
    """A fixed, class-proportional sample (all rows when ``size`` is None)."""
    if size is None or size >= len(rows):
        return rows
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[0], []).append(row)
    rng = random.Random(seed)
    sample: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        share = round(size * len(group) / len(rows))
        sample.extend(rng.sample(group, min(share, len(group))))
    rng.shuffle(sample)
    return sample


def macro_recall(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str] = LABELS) -> float:
    recalls = []
    for label in labels:
        total = sum(1 for item in gold if item == label)
        if total:
            recalls.append(sum(1 for g, p in zip(gold, predicted, strict=True) if g == label == p) / total)
    return sum(recalls) / len(recalls)


def binary_accuracy(
    gold: Sequence[str], probabilities: Sequence[dict[str, float] | None], predicted: Sequence[str]
) -> float:
    correct = 0
    for label, probs, answer in zip(gold, probabilities, predicted, strict=True):
        if answer == "neutral" and probs is not None:
            answer = "positive" if probs["positive"] >= probs["negative"] else "negative"
        correct += answer == label
    return correct / len(gold)


def calibration_error(
    gold: Sequence[str], probabilities: Sequence[dict[str, float] | None], bins: int = 10
) -> float:
    """Expected calibration error of the top label's probability (NaN without probabilities).

    The confidences are split into ``bins`` equal-width bins; each bin adds its share of the messages
    times the gap between its mean confidence and its accuracy. 0 is perfectly calibrated.
    """
    if not probabilities or any(probs is None for probs in probabilities):
        return float("nan")
    tops = [max(probs.items(), key=lambda item: item[1]) for probs in probabilities if probs is not None]
    binned: dict[int, list[tuple[float, bool]]] = {}
    for label, (answer, confidence) in zip(gold, tops, strict=True):
        index = min(int(confidence * bins), bins - 1)
        binned.setdefault(index, []).append((confidence, answer == label))
    error = 0.0
    for members in binned.values():
        mean_confidence = sum(confidence for confidence, _ in members) / len(members)
        accuracy = sum(right for _, right in members) / len(members)
        error += len(members) / len(tops) * abs(mean_confidence - accuracy)
    return error


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# ---------------------------------------------------------------------------------- methods


class Method:
    """One way to read moods: ``read(texts)`` returns (label, probabilities or None) per text."""

    name = ""
    batched = False

    def read(self, texts: Sequence[str]) -> list[tuple[str, dict[str, float] | None]]:
        raise NotImplementedError


class MoodmateMethod(Method):
    name = "(c) moodmate"
    batched = True

    def __init__(self, model, name: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        if name is not None:
            self.name = name

    def read(self, texts: Sequence[str]) -> list[tuple[str, dict[str, float] | None]]:
        return [
            (mood.label.value, {label.value: p for label, p in mood.probabilities})
            for mood in self.model.classify(list(texts))
        ]


class ZeroShotLogitsMethod(Method):
    """Zero-shot prompt, one forward pass over all of it per message, the three label logits compared."""

    name = "(b) zero-shot logits, float32"

    def __init__(self, model, *, name: str | None = None) -> None:  # type: ignore[no-untyped-def]
        import torch

        self.model = model
        self.torch = torch
        if name is not None:
            self.name = name
        tokenizer = model.decoder.tokenizer
        self.label_ids = [tokenizer.encode(label, add_special_tokens=False)[0] for label in LABELS]

    def _prompt(self, text: str) -> list[int]:
        from bot.model.mood_prompt import clean_message

        messages = [
            {"role": "system", "content": ZERO_SHOT_INSTRUCTION},
            {"role": "user", "content": clean_message(text)},
        ]
        decoder = self.model.decoder
        return decoder.encode(decoder.render_chat(messages))[-1024:]

    def read(self, texts: Sequence[str]) -> list[tuple[str, dict[str, float] | None]]:
        torch = self.torch
        results: list[tuple[str, dict[str, float] | None]] = []
        with torch.inference_mode():
            for text in texts:
                ids = torch.tensor([self._prompt(text)])
                logits = self.model.decoder.model(input_ids=ids).logits[0, -1].float()
                probs = torch.softmax(logits[self.label_ids], dim=-1).tolist()
                mapping = dict(zip(LABELS, probs, strict=True))
                results.append((max(mapping, key=mapping.__getitem__), mapping))
        return results


class GenerateSearchMethod(ZeroShotLogitsMethod):
    """Zero-shot prompt, greedy generation of a few tokens, the first label word found in them wins."""

    name = "(a) generate+search, float32"

    def read(self, texts: Sequence[str]) -> list[tuple[str, dict[str, float] | None]]:
        torch = self.torch
        results: list[tuple[str, dict[str, float] | None]] = []
        stops = self.model.replies.stop_ids
        with torch.inference_mode():
            for text in texts:
                ids = torch.tensor([self._prompt(text)])
                output = self.model.decoder.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=4,
                    do_sample=False,
                    eos_token_id=list(stops),
                )
                answer = self.model.decoder.tokenizer.decode(
                    output[0, ids.shape[1] :], skip_special_tokens=True
                ).lower()
                found = [(answer.find(label), label) for label in LABELS if label in answer]
                found += [
                    (answer.find(word), label)
                    for word, label in (
                        ("积极", "positive"),
                        ("正面", "positive"),
                        ("消极", "negative"),
                        ("负面", "negative"),
                        ("中性", "neutral"),
                    )
                    if word in answer
                ]
                results.append((min(found)[1] if found else "neutral", None))
        return results


# ---------------------------------------------------------------------------------- scenarios


def evaluate(
    method: Method, tweets: list[tuple[str, str]], waimai: list[tuple[str, str]], batch_size: int
) -> dict[str, float]:
    def run(rows: list[tuple[str, str]]) -> list[tuple[str, dict[str, float] | None]]:
        out: list[tuple[str, dict[str, float] | None]] = []
        step = batch_size if method.batched else 1
        for start in range(0, len(rows), step):
            out.extend(method.read([text for _, text in rows[start : start + step]]))
        return out

    started = time.perf_counter()
    tweet_results = run(tweets)
    waimai_results = run(waimai)
    return {
        "tweeteval_macro_recall": macro_recall([g for g, _ in tweets], [p for p, _ in tweet_results]),
        "tweeteval_calibration_error": calibration_error(
            [g for g, _ in tweets], [p for _, p in tweet_results]
        ),
        "waimai_accuracy": binary_accuracy(
            [g for g, _ in waimai], [p for _, p in waimai_results], [p for p, _ in waimai_results]
        ),
        "eval_seconds": time.perf_counter() - started,
    }


def mood_latencies(methods: Sequence[Method], texts: Sequence[str], batch: int) -> list[dict[str, float]]:
    """Single-message (and, for batching methods, per-message batched) read times of every method.

    The methods are timed side by side: each message is read by every method in turn, the order
    rotating from message to message, so a slow or fast spell of the machine falls on all of them
    alike and their ratios hold even when the machine's speed drifts (here it drifted by up to 30%
    within minutes, which the earlier one-method-after-another timing carried into the ratios).
    """
    for method in methods:
        method.read(texts[:2])  # warm-up
    singles = _times_in_turn(methods, [[text] for text in texts])
    results = [
        {"single_p50_ms": percentile(times, 0.5), "single_p95_ms": percentile(times, 0.95)}
        for times in singles
    ]
    batching = [which for which, method in enumerate(methods) if method.batched]
    chunks = [texts[start : start + batch] for start in range(0, len(texts) - batch + 1, batch)]
    for which, times in zip(batching, _times_in_turn([methods[i] for i in batching], chunks), strict=True):
        results[which].update(batched_p50_ms=percentile(times, 0.5), batched_p95_ms=percentile(times, 0.95))
    return results


def _times_in_turn(methods: Sequence[Method], calls: Sequence[Sequence[str]]) -> list[list[float]]:
    """Per method, its ms per message for each of ``calls``, which every method reads in turn.

    Who goes first rotates from call to call.
    """
    times: list[list[float]] = [[] for _ in methods]
    for index, messages in enumerate(calls):
        for offset in range(len(methods)):
            which = (index + offset) % len(methods)
            started = time.perf_counter()
            methods[which].read(messages)
            times[which].append((time.perf_counter() - started) * 1000 / len(messages))
    return times


def reply_speed(model, max_new_tokens: int = 64) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Time-to-first-token and tokens/s of replies written with the bot's own reply prompt."""
    from bot.model.base import ChatTurn
    from bot.prompts import clean_reply, reply_turns, system_prompt_for, with_language_hint

    ttfts, rates, samples = [], [], []
    model.replies.seed(7)  # the same sampling draws for every model compared
    for chat in CHATS:
        history: list[ChatTurn] = []
        for user_text in chat:
            history.append(ChatTurn("user", user_text))
            first: list[float] = []
            started = time.perf_counter()
            raw = model.generate(
                with_language_hint(system_prompt_for(user_text), history),
                reply_turns(history),
                max_new_tokens=max_new_tokens,
                on_text=lambda _piece, first=first: first or first.append(time.perf_counter()),
            )
            elapsed = time.perf_counter() - started
            tokens = model.count_tokens(raw)
            reply = clean_reply(raw, user_text)  # what the user is shown, and what history keeps
            if first:
                ttfts.append((first[0] - started) * 1000)
                if elapsed - (first[0] - started) > 0 and tokens > 1:
                    rates.append((tokens - 1) / (elapsed - (first[0] - started)))
            samples.append({"user": user_text, "reply": reply})
            history.append(ChatTurn("assistant", reply))
    return {
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "tokens_per_s": statistics.median(rates) if rates else 0.0,
        "samples": samples,
    }


def cold_start(model_name: str, quantize: bool) -> dict[str, float]:
    """Load the model in a fresh process (cache already built) and report time and RSS."""
    code = (
        "import time,json;t=time.perf_counter();"
        "from bot.settings import Settings;from bot.bootstrap import model_options;"
        "from bot.model.loader import load_model;"
        f"s=Settings(_env_file=None, model={model_name!r}, quantize={quantize});"
        "m=load_model(model_options(s), progress=False);"
        "d=time.perf_counter()-t;"
        "rss=[int(l.split()[1])/1024 for l in open('/proc/self/status') if l.startswith('VmRSS:')][0];"
        "print(json.dumps({'cold_start_s': d, 'rss_after_load_mb': rss}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(completed.stderr[-2000:], file=sys.stderr)
    return {"cold_start_s": float("nan"), "rss_after_load_mb": float("nan")}


# ---------------------------------------------------------------------------------- report


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def print_table(
    rows: list[dict[str, object]], columns: list[tuple[str, str, int]], out: Callable[[str], None]
) -> None:
    header = ["method", *[title for _, title, _ in columns]]
    table = [
        [str(row["method"]), *[_fmt(row.get(key), digits) for key, _, digits in columns]] for row in rows
    ]
    widths = [max(len(line[index]) for line in [header, *table]) for index in range(len(header))]
    out(" | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)))
    out("-+-".join("-" * width for width in widths))
    for line in table:
        out(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="use every row of both data sets")
    parser.add_argument("--sample", type=int, default=300, help="messages per data set (default 300)")
    parser.add_argument("--model", default=None, help="MOODMATE_MODEL override")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--methods", default="abc", help="which methods to run, from 'abifc' (see above)")
    parser.add_argument("--no-quantize", action="store_true", help="load with quantize off")
    parser.add_argument("--latency-messages", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-replies", action="store_true")
    parser.add_argument("--skip-cold-start", action="store_true")
    args = parser.parse_args(argv)

    from bot.bootstrap import model_options
    from bot.model.loader import load_model
    from bot.settings import Settings

    settings = Settings(
        _env_file=None, **({"model": args.model} if args.model else {}), quantize=not args.no_quantize
    )
    size = None if args.full else args.sample
    tweets = stratified_sample(read_tsv(DATA_DIR / "tweeteval_sentiment_val.tsv"), size)
    waimai = stratified_sample(read_tsv(DATA_DIR / "waimai_10k.tsv"), size)
    print(
        f"model={settings.model} quantize={settings.quantize} tweets={len(tweets)} waimai={len(waimai)}",
        file=sys.stderr,
    )

    cold = {} if args.skip_cold_start else cold_start(settings.model, settings.quantize)
    model = load_model(model_options(settings), progress=True)
    rss = rss_mb()
    chat_texts = [text for _, text in tweets if model.count_tokens(text) <= 30][: args.latency_messages]
    if not chat_texts:  # a tokenizer that splits finely: use the shortest messages instead
        chat_texts = sorted((text for _, text in tweets), key=len)[: args.latency_messages]

    plain = model  # the plain float32 model for (a), (b) and (f): a second load unless quantize is off
    if settings.quantize and set(args.methods) & set("abf"):
        plain = load_model(model_options(settings.model_copy(update={"quantize": False})), progress=True)
        # Stock transformers attention too, so (a)/(b) are the plain model (moodmate's grouped
        # attention computes the same numbers, faster: see bot/model/cpu_attention.py).
        plain.decoder.model.set_attn_implementation("sdpa")  # type: ignore[attr-defined]
    makers: dict[str, Callable[[], Method]] = {
        "a": lambda: GenerateSearchMethod(plain),
        "b": lambda: ZeroShotLogitsMethod(plain),
        "i": lambda: ZeroShotLogitsMethod(model, name="(i) zero-shot logits, moodmate's weights"),
        "f": lambda: MoodmateMethod(plain, name="(f) moodmate's method, float32"),
        "c": lambda: MoodmateMethod(model),
    }
    methods = [makers[letter]() for letter in "abifc" if letter in args.methods]
    rows: list[dict[str, object]] = []
    for method in methods:
        print(f"running {method.name} ...", file=sys.stderr)
        row: dict[str, object] = {"method": method.name}
        row.update(evaluate(method, tweets, waimai, args.batch))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"timing mood reads side by side over {len(chat_texts)} chat-length messages ...", file=sys.stderr)
    for row, latency in zip(rows, mood_latencies(methods, chat_texts, args.batch), strict=True):
        row.update(latency)
    replies = {} if args.skip_replies else reply_speed(model)
    # The same replies from the float32 weights (moodmate's decode loop), to compare speed and quality.
    plain_replies = {} if args.skip_replies or plain is model else reply_speed(plain)
    for row in rows:
        if row["method"] == "(c) moodmate":
            row.update({key: value for key, value in replies.items() if key != "samples"})
            row.update(cold)
            row["rss_mb"] = rss
        elif str(row["method"]).startswith("(b)"):
            row.update({key: value for key, value in plain_replies.items() if key != "samples"})
    baseline = next((row for row in rows if str(row["method"]).startswith("(b)")), None)
    if baseline:
        for row in rows:
            row["speedup_vs_b"] = float(baseline["single_p50_ms"]) / float(row["single_p50_ms"])

    columns = [
        ("tweeteval_macro_recall", "TweetEval macro-R", 3),
        ("tweeteval_calibration_error", "TweetEval ECE", 3),
        ("waimai_accuracy", "waimai acc", 3),
        ("single_p50_ms", "p50 ms", 0),
        ("single_p95_ms", "p95 ms", 0),
        ("batched_p50_ms", f"p50 ms/msg (batch {args.batch})", 0),
        ("batched_p95_ms", "p95 ms/msg (batch)", 0),
        ("speedup_vs_b", "x vs (b)", 1),
        ("ttft_p50_ms", "reply TTFT ms", 0),
        ("tokens_per_s", "reply tok/s", 1),
        ("cold_start_s", "cold start s", 1),
        ("rss_after_load_mb", "RSS MB (fresh load)", 0),
        ("rss_mb", "RSS MB (bench proc)", 0),
    ]
    print(
        f"\nmodel={settings.model} quantize={settings.quantize} weights={getattr(model, 'weights', '?')} "
        f"TweetEval n={len(tweets)} "
        f"waimai n={len(waimai)} threads={__import__('torch').get_num_threads()}"
    )
    print_table(rows, columns, print)
    for title, found in (("float32 weights", plain_replies), ("moodmate (int8)", replies)):
        if found.get("samples"):
            print(f"\nsample replies, {title}:")
        for sample in found.get("samples", []):
            print(f"  user: {sample['user']}\n  moodmate: {sample['reply']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": settings.model,
            "quantize": settings.quantize,
            "weights": getattr(model, "weights", None),
            "tweets": len(tweets),
            "waimai": len(waimai),
            "rows": rows,
            "reply_samples": replies.get("samples", []),
            "float32_reply_samples": plain_replies.get("samples", []),
        }
        args.json.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
