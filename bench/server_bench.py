"""The real engine on the in-process model and on llama.cpp's server (1 and 4 parallel slots), side by side.

    python bench/server_bench.py                                  # 50 users x 5 messages per setup
    python bench/server_bench.py --users 12 --messages 2 --setups inprocess,slots1,slots4

Each setup runs ``bench/loadtest.py``'s load (calm users and a few flooders, real timing) through the
real engine and worker against the real model, one setup after another (never two at once: they share
the CPU): ``inprocess`` is the bundled model loaded by the bot; ``slotsN`` is llama.cpp's
``llama-server`` serving the same bundled GGUF with ``--parallel N`` (continuous batching), reached
through ``MOODMATE_INFERENCE_URL`` with ``MOODMATE_INFERENCE_CONCURRENCY=N``. ``llama-server`` is built
once from the llama-cpp-python sdist's sources (``python bench/llama_servers.py --build``).

Printed per setup: answered, lost (must be 0), throughput (answered/s), p50/p95 total latency, mood
read p50 (one mood-read model call: a batch locally, parallel requests on a server), and the
mood-read macro-recall on chat-length TweetEval validation messages (a fixed stratified sample read
in place from ``../shared/data/sentiment/``), as the setup reads moods and by plain label scoring (the
in-process model with its learned readout switched off: a server has no hidden states, so label
scoring is what it is compared with).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import loadtest  # noqa: E402

from bench.llama_servers import LlamaServer, llama_server_binary  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.types import MOOD_LABELS  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "sentiment" / "tweeteval_sentiment_val.tsv"
_mood_calls: list[float] = []
_lock = threading.Lock()


class MoodTimedModel(loadtest.TimedModel):
    """loadtest's wrapper, also timing every mood-read call."""

    def classify(self, texts):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return self.inner.classify(texts)
        finally:
            with _lock:
                _mood_calls.append(time.perf_counter() - started)


loadtest.TimedModel = MoodTimedModel  # type: ignore[misc]


def chat_sample(size: int, seed: int = 11) -> list[tuple[str, str]]:
    """A stratified sample of chat-length TweetEval validation messages (label, text)."""
    with DATA.open(encoding="utf-8") as source:
        rows = [(row["label"], row["text"]) for row in csv.DictReader(source, delimiter="\t")]
    short = [(label, text) for label, text in rows if len(text) <= 120]
    rng = random.Random(seed)
    sample: list[tuple[str, str]] = []
    for label in ("positive", "neutral", "negative"):
        pool = [row for row in short if row[0] == label]
        sample += rng.sample(pool, min(len(pool), size // 3))
    rng.shuffle(sample)
    return sample


def macro_recall(model, sample: list[tuple[str, str]], batch: int) -> float:  # type: ignore[no-untyped-def]
    """Macro-averaged recall of ``model.classify`` over ``sample``."""
    predicted: list[str] = []
    for start in range(0, len(sample), batch):
        predicted += [
            mood.label.value for mood in model.classify([text for _, text in sample[start : start + batch]])
        ]
    recalls = []
    for label in (label.value for label in MOOD_LABELS):
        gold = [index for index, (truth, _) in enumerate(sample) if truth == label]
        recalls.append(sum(predicted[index] == label for index in gold) / len(gold))
    return statistics.fmean(recalls)


def _load_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(
        users=args.users,
        messages=args.messages,
        real=True,
        mood_seconds=0.0,
        reply_seconds=0.0,
        reply_tokens=args.reply_tokens,
        max_pending=args.max_pending,
        spread=args.spread,
        think=args.think,
        seed=args.seed,
    )


def run_setup(name: str, args: argparse.Namespace, sample: list[tuple[str, str]]) -> dict[str, object]:
    """One setup: the load, then the mood-read recall on the same model."""
    for variable in ("MOODMATE_INFERENCE_URL", "MOODMATE_INFERENCE_CONCURRENCY", "MOODMATE_INFERENCE_MODEL"):
        os.environ.pop(variable, None)
    os.environ["MOODMATE_THREADS"] = str(args.threads)
    server: LlamaServer | None = None
    if name.startswith("slots"):
        slots = int(name.removeprefix("slots"))
        log = Path(tempfile.gettempdir()) / f"moodmate-bench-llama-server-{slots}.log"
        server = LlamaServer(
            kind="cpp", parallel=slots, context=args.context, threads=args.threads, log=log
        ).start()
        os.environ["MOODMATE_INFERENCE_URL"] = server.base_url
        os.environ["MOODMATE_INFERENCE_CONCURRENCY"] = str(slots)
    try:
        with _lock:
            _mood_calls.clear()
        database = Path(tempfile.mkdtemp(prefix="moodmate-server-bench-")) / "load.db"
        load = asyncio.run(loadtest.run_load(_load_args(args), database))
        with _lock:
            mood_p50 = statistics.median(_mood_calls) if _mood_calls else float("nan")
        recall = label_recall = float("nan")
        if sample:
            from bot.bootstrap import model_options
            from bot.model.loader import load_model

            model = load_model(model_options(Settings(_env_file=None)), progress=False)  # type: ignore[call-arg]
            recall = macro_recall(model, sample, batch=8)
            moods = getattr(model, "moods", None)
            if moods is not None:  # in-process: also plain label scoring, as a server reads moods
                moods.readouts_enabled = False
                label_recall = macro_recall(model, sample, batch=8)
                moods.readouts_enabled = True
            else:
                label_recall = recall
            close = getattr(model, "close", None)
            if callable(close):
                close()
    finally:
        if server is not None:
            server.stop()
    return {
        "setup": name,
        "answered": load["answered"],
        "messages_in": load["messages_in"],
        "refused": load["refused"],
        "failed": load["failed"],
        "lost": load["lost"],
        "throughput_per_s": load["throughput_msg_per_s"],
        "total_p50_s": load["total_p50_s"],
        "total_p95_s": load["total_p95_s"],
        "mood_read_p50_s": mood_p50,
        "macro_recall": recall,
        "label_recall": label_recall,
        "wall_s": load["wall_s"],
    }


def _table(results: list[dict[str, object]]) -> str:
    columns = [
        ("setup", "setup", "{}"),
        ("answered", "answered", "{}"),
        ("lost", "lost", "{}"),
        ("throughput_per_s", "answered/s", "{:.3f}"),
        ("total_p50_s", "p50 total s", "{:.1f}"),
        ("total_p95_s", "p95 total s", "{:.1f}"),
        ("mood_read_p50_s", "mood p50 s", "{:.3f}"),
        ("macro_recall", "mood macro-recall", "{:.3f}"),
        ("label_recall", "… by label scoring", "{:.3f}"),
        ("wall_s", "wall s", "{:.0f}"),
    ]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for result in results:
        cells = [form.format(result[key]) for key, _, form in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--reply-tokens", type=int, default=64)
    parser.add_argument("--max-pending", type=int, default=3)
    parser.add_argument("--spread", type=float, default=2.0)
    parser.add_argument("--think", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--context", type=int, default=2048, help="llama-server context per slot")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for every setup (the in-process model and llama-server alike)",
    )
    parser.add_argument("--setups", default="inprocess,slots1,slots4")
    parser.add_argument(
        "--recall-sample", type=int, default=150, help="chat messages for the recall (0: skip)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    setups = [name.strip() for name in args.setups.split(",") if name.strip()]
    if any(name.startswith("slots") for name in setups) and llama_server_binary() is None:
        parser.error("no llama-server: build it once with `python bench/llama_servers.py --build`")
    sample = chat_sample(args.recall_sample) if args.recall_sample else []
    results = []
    for name in setups:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(run_setup(name, args, sample))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(f"{args.users} users x {args.messages} messages, {args.reply_tokens}-token replies, "
          f"{args.threads} thread(s), recall on {len(sample)} chat-length TweetEval messages")  # fmt: skip
    print(_table(results))
    base = next((r for r in results if r["setup"] == "inprocess"), None)
    if base is not None:
        for result in results:
            if result is not base and base["throughput_per_s"]:
                ratio = float(result["throughput_per_s"]) / float(base["throughput_per_s"])  # type: ignore[arg-type]
                gap = float(result["macro_recall"]) - float(base["macro_recall"])  # type: ignore[arg-type]
                plain_gap = float(result["macro_recall"]) - float(base["label_recall"])  # type: ignore[arg-type]
                print(f"{result['setup']}: {ratio:.2f}x in-process throughput, recall {gap:+.3f} "
                      f"({plain_gap:+.3f} against in-process label scoring)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(result["lost"] == 0 for result in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
