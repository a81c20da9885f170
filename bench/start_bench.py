"""moodmate side by side with llama.cpp (llama-cpp-python) on the same GGUF weights and threads, in one run.

Usage (from the project root)::

    python bench/start_bench.py [--threads 2] [--runs 3] [--messages 40] [--first-run] [--json PATH]

Measured, with the model cache already built (a first, untimed start of each warms it and the page cache):

* load to ready in a fresh process (spawn to "ready", ``--runs`` times each, in turn): moodmate's
  ``load_model`` (its prefix key/values come from the cache); llama.cpp's ``Llama(...)`` plus its pass
  over the English mood prefix (also shown without that pass);
* mood read p50/p95 on chat-length messages (TweetEval validation tweets of at most 30 tokens, read in
  place from ``../shared/data/sentiment``), one message at a time, each read by both in turn: moodmate's
  ``classify``; llama.cpp evaluating the same message and answer-cue tokens after its cached few-shot
  prefix, the label probabilities from the same label tokens (their agreement is printed);
* reply time to first token and decode tokens/s on the bot's reply prompts (the same token ids for
  both, the same sampling settings, 64 new tokens at most), with sample replies;
* moodmate alone: ``echo hi | moodmate classify`` (whole process, wall time and peak RSS) and
  ``moodmate chat`` on a terminal (time until its prompt shows, and until its first answer); with
  ``--first-run`` also ``echo hi | moodmate classify`` on an empty temporary cache (join, checksum,
  conversion, quantization and the start snapshot), with the progress bars it shows.

llama.cpp repacks its weights ("extra buffer types", its default) except on AMX CPUs, where
llama-cpp-python 0.3.36 crashes with it (as ``bench/llama_cpp_server.py``); ``--llama-repack on|off``
overrides.
The ratio column is moodmate's speed relative to llama.cpp's: above 1, moodmate is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.llama_cpp_server import cpu_has_amx  # noqa: E402
from bench.mood_bench import CHATS, DATA_DIR, percentile, read_tsv, rss_mb  # noqa: E402

REPLY_TOKENS = 64

_RSS = "[int(l.split()[1])//1024 for l in open('/proc/self/status') if l.startswith('VmRSS:')][0]"

MOODMATE_READY = f"""
import json
from bot.bootstrap import load_settings, model_options
from bot.model.loader import load_model
model = load_model(model_options(load_settings()), progress=False)
print(json.dumps({{"ready": True, "rss_mb": {_RSS}}}), flush=True)
model.classify(["hi"])
print(json.dumps({{"read_rss_mb": {_RSS}}}), flush=True)
"""

LLAMA_READY = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from bench.start_bench import open_llama
request = json.load(open(sys.argv[1]))
llm = open_llama(request["model"], request["threads"], repack=request["repack"])
print(json.dumps({{"loaded": True}}), flush=True)
llm.eval(request["prefix_ids"])
print(json.dumps({{"ready": True, "rss_mb": {_RSS}}}), flush=True)
"""


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the timed processes: this checkout first on the path, ``threads`` threads."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    env["MOODMATE_THREADS"] = str(threads)
    env.pop("MOODMATE_INFERENCE_URL", None)
    return {**env, **(extra or {})}


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (leader, follower) 120 columns wide (tqdm draws nothing on a 0-column one)."""
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return leader, follower


def _peak_rss_kb(pid: int) -> int:
    """The ``VmHWM`` (peak RSS, KB) of running process ``pid``; 0 once it has exited.

    Not ``ru_maxrss`` after it exits: a child spawned from here inherits this process's own peak
    through its exec (a benchmark process that had just built the start snapshot gave every
    ``classify`` 2,680 MB, against 730 MB alone).
    """
    with contextlib.suppress(OSError):  # gone already
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):  # absent once it has exited
                return int(line.split()[1])
    return 0


def _wait_peak_rss_mb(process: subprocess.Popen[str]) -> float:
    """Wait for ``process``; its peak RSS in MB, read every 5 ms while it runs (the last read comes at
    most 5 ms before it exits)."""
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, _peak_rss_kb(process.pid))
        time.sleep(0.005)
    return peak_kb / 1024


def time_to_ready(command: Sequence[str], env: dict[str, str]) -> dict[str, float]:
    """Spawn ``command``; seconds until it prints a JSON line with "ready", and the RSS it reports."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    result = {"ready_s": math.nan, "rss_mb": math.nan, "loaded_s": math.nan}
    for line in process.stdout:
        if line.startswith("{") and '"loaded"' in line:
            result["loaded_s"] = time.perf_counter() - started
        if line.startswith("{") and '"ready"' in line:
            result.update(ready_s=time.perf_counter() - started, rss_mb=float(json.loads(line)["rss_mb"]))
            break
    rest, errors = process.communicate()
    for line in rest.splitlines():
        if line.startswith("{") and "read_rss_mb" in line:
            result["read_rss_mb"] = float(json.loads(line)["read_rss_mb"])
    if math.isnan(result["ready_s"]):
        print(errors[-3000:], file=sys.stderr)
    return result


def _spawn_classify(env: dict[str, str], stderr: int) -> subprocess.Popen[str]:
    """Start ``moodmate classify`` in a fresh process, its stdin and stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "classify"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def classify_hi(env: dict[str, str]) -> dict[str, float]:
    """``echo hi | moodmate classify``: whole-process wall time and peak RSS."""
    started = time.perf_counter()
    process = _spawn_classify(env, subprocess.DEVNULL)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("hi\n")
    process.stdin.close()
    rss = _wait_peak_rss_mb(process)  # its output, one line, waits in the pipe
    wall = time.perf_counter() - started
    return {"wall_s": wall, "peak_rss_mb": rss, "output": process.stdout.read().strip()}


def first_run(threads: int) -> dict[str, object]:
    """``echo hi | moodmate classify`` on an empty cache (a temporary one), its stderr on a terminal.

    Returns the wall time to the answer, the peak RSS, and the progress bars it showed (their titles).
    """
    import re
    import shutil

    cache = Path(tempfile.mkdtemp(prefix="moodmate-first-run-"))
    leader, follower = _terminal()
    env = child_env(threads, {"MOODMATE_CACHE_DIR": str(cache)})
    started = time.perf_counter()
    process = _spawn_classify(env, follower)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("hi\n")
    process.stdin.close()
    seen = b""
    rss = math.nan
    peak_kb = 0
    while True:  # the follower stays open here, so the terminal never hangs up before it is drained
        if math.isnan(rss):
            peak_kb = max(peak_kb, _peak_rss_kb(process.pid))
        ready, _, _ = select.select([leader], [], [], 0.05)
        if ready:
            seen += os.read(leader, 65536)
            continue
        if math.isnan(rss):
            pid, _, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                rss, wall = peak_kb / 1024, time.perf_counter() - started
                process.returncode = 0
        else:
            break
    output = process.stdout.read()
    os.close(follower)
    os.close(leader)
    shutil.rmtree(cache, ignore_errors=True)
    text = seen.decode("utf-8", "replace").replace("\r", "\n")
    titles = list(dict.fromkeys(re.findall(r"^([a-z][^:\n]{2,60}):\s+\d+%", text, flags=re.MULTILINE)))
    return {"wall_s": wall, "peak_rss_mb": rss, "bars": titles, "output": output.strip()}


def chat_on_terminal(env: dict[str, str], message: str = "hi", timeout: float = 300.0) -> dict[str, float]:
    """``moodmate chat`` on a pseudo-terminal: seconds to its prompt, and to its first answer."""
    from adapters.console import PROMPT

    leader, follower = _terminal()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "chat"],
        cwd=ROOT,
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    seen = b""
    marks: list[float] = []
    prompt = PROMPT.strip().encode()
    try:
        while len(marks) < 2 and time.perf_counter() - started < timeout:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if seen.count(prompt) > len(marks):
                marks.append(time.perf_counter() - started)
                if len(marks) == 1:
                    os.write(leader, f"{message}\n".encode())
        os.write(leader, b"/quit\n")
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    text = seen.decode("utf-8", "replace")
    after = text.split(PROMPT, 1)[-1]
    answer = after.split(message, 1)[-1].split(PROMPT.strip(), 1)[0].strip()
    return {
        "prompt_s": marks[0] if marks else math.nan,
        "first_answer_s": marks[1] if len(marks) > 1 else math.nan,
        "answer": answer[-200:],
    }


# ---------------------------------------------------------------------------------- llama.cpp


def llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def open_llama(model_path: str, threads: int, *, repack: bool = False, context: int = 4096):  # type: ignore[no-untyped-def]
    """``llama_cpp.Llama`` on ``model_path`` with ``threads`` threads (weight repacking off unless asked)."""
    from llama_cpp import Llama

    from bench.llama_cpp_server import repacking_off

    with contextlib.nullcontext() if repack else repacking_off():
        return Llama(model_path, n_threads=threads, n_threads_batch=threads, n_ctx=context, verbose=False)


class LlamaMood:
    """Mood reads on llama.cpp: message tokens evaluated after the cached prefix, label tokens compared."""

    def __init__(self, llm, prefix_ids: list[int], label_groups: list[list[int]]) -> None:  # type: ignore[no-untyped-def]
        import numpy

        self.llm = llm
        self.numpy = numpy
        self.prefix_ids = prefix_ids
        self.groups = label_groups
        self.flat = [token for group in label_groups for token in group]
        llm.reset()
        llm.eval(prefix_ids)

    def read(self, message_ids: list[int]) -> list[float]:
        """The three label probabilities (LABELS order) for ``message_ids`` (message and answer cue)."""
        import llama_cpp.llama_cpp as bindings

        numpy = self.numpy
        self.llm.n_tokens = len(self.prefix_ids)  # the next eval drops everything after the prefix
        self.llm.eval(message_ids)
        pointer = bindings.llama_get_logits(self.llm.ctx)
        logits = numpy.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),))
        chosen = logits[self.flat].astype(numpy.float64)
        chosen -= chosen.max()
        token_probs = numpy.exp(chosen) / numpy.exp(chosen).sum()
        per_label, at = [], 0
        for group in self.groups:
            per_label.append(float(token_probs[at : at + len(group)].sum()))
            at += len(group)
        total = sum(per_label)
        return [value / total for value in per_label]


def llama_reply(llm, prompt_ids: list[int], stop_ids: set[int], max_new_tokens: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Sample a reply the way moodmate does (temperature 0.7, top-p 0.9, top-k 40, repetition 1.1)."""
    started = time.perf_counter()
    first = math.nan
    tokens: list[int] = []
    for token in llm.generate(prompt_ids, top_k=40, top_p=0.9, temp=0.7, repeat_penalty=1.1, reset=True):
        if not tokens:
            first = time.perf_counter() - started
        if token in stop_ids:
            break
        tokens.append(int(token))
        if len(tokens) >= max_new_tokens:
            break
    elapsed = time.perf_counter() - started
    text = llm.detokenize(tokens).decode("utf-8", "replace")
    rate = (len(tokens) - 1) / (elapsed - first) if len(tokens) > 1 and elapsed > first else math.nan
    return {"ttft_ms": first * 1000, "tokens": len(tokens), "tokens_per_s": rate, "text": text}


# ---------------------------------------------------------------------------------- moodmate internals


def moodmate_mood_prompt(model) -> tuple[list[int], Callable[[str], list[int]], list[list[int]]]:  # type: ignore[no-untyped-def]
    """The English mood prompt as moodmate runs it: prefix ids, message-to-ids, label token groups."""
    from bot.model.mood_prompt import label_words_for
    from bot.model.mood_reader import label_token_groups

    prefix = model.moods.prefix("en")
    groups = label_token_groups(model.decoder.tokenizer, label_words_for("en"))
    return list(prefix.prefix_ids), lambda text: model.moods.token_ids(text, "en"), groups


def moodmate_reply(model, system: str, turns, max_new_tokens: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    first: list[float] = []
    started = time.perf_counter()
    raw = model.generate(
        system,
        turns,
        max_new_tokens=max_new_tokens,
        on_text=lambda _piece: first or first.append(time.perf_counter()),
    )
    elapsed = time.perf_counter() - started
    tokens = model.count_tokens(raw)
    ttft = first[0] - started if first else math.nan
    rate = (tokens - 1) / (elapsed - ttft) if first and tokens > 1 and elapsed > ttft else math.nan
    return {"ttft_ms": ttft * 1000, "tokens": tokens, "tokens_per_s": rate, "text": raw}


# ---------------------------------------------------------------------------------- report


def _median(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def _spread(values: Sequence[float], digits: int) -> str:
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return "-"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{statistics.median(finite):.{digits}f} ({min(finite):.{digits}f}–{max(finite):.{digits}f})"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}×"


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("", "moodmate", "llama.cpp", "moodmate speed vs llama.cpp")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="fresh-process starts of each (default 3)")
    parser.add_argument("--messages", type=int, default=40, help="chat-length messages timed (default 40)")
    parser.add_argument("--skip-llama", action="store_true", help="moodmate alone")
    parser.add_argument(
        "--llama-repack",
        choices=("auto", "on", "off"),
        default="auto",
        help="llama.cpp's weight repacking (auto: on unless the CPU has AMX)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--first-run", action="store_true", help="also time a first start on an empty (temporary) cache"
    )
    args = parser.parse_args(argv)

    import torch

    from bench.llama_servers import bundled_gguf
    from bot.bootstrap import load_settings, model_options
    from bot.model.base import ChatTurn
    from bot.model.loader import load_model
    from bot.prompts import clean_reply, reply_turns, system_prompt_for, with_language_hint

    use_llama = llama_cpp_installed() and not args.skip_llama
    repack = args.llama_repack == "on" or (args.llama_repack == "auto" and not cpu_has_amx())
    if not use_llama and not args.skip_llama:
        print("no llama-cpp-python (pip install -e '.[server]'): moodmate alone", file=sys.stderr)
    settings = load_settings(threads=args.threads)
    env = child_env(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="moodmate-start-bench-"))
    chat_env = child_env(args.threads, {"DATABASE_URL": f"sqlite+aiosqlite:///{scratch / 'chat.db'}"})

    print("loading moodmate in this process (builds the cache if needed) ...", file=sys.stderr)
    model = load_model(model_options(settings), progress=True)
    torch.set_num_threads(args.threads)
    prefix_ids, message_ids, label_groups = moodmate_mood_prompt(model)
    gguf = str(bundled_gguf(Path(settings.cache_dir))) if use_llama else ""
    request = scratch / "llama.json"
    request.write_text(
        json.dumps(
            {"model": gguf, "threads": args.threads, "repack": repack, "prefix_ids": prefix_ids}
        )
    )
    moodmate_ready = [sys.executable, "-c", MOODMATE_READY]
    llama_ready = [sys.executable, "-c", LLAMA_READY, str(request)]

    print("fresh-process starts (one untimed warm-up each) ...", file=sys.stderr)
    time_to_ready(moodmate_ready, env)
    if use_llama:
        time_to_ready(llama_ready, env)
    starts: dict[str, list[dict[str, float]]] = {"moodmate": [], "llama": [], "classify": [], "chat": []}
    for run in range(args.runs):
        order = ["moodmate", "llama", "classify", "chat"]
        order = order[run % len(order) :] + order[: run % len(order)]
        for what in order:
            if what == "moodmate":
                starts[what].append(time_to_ready(moodmate_ready, env))
            elif what == "llama" and use_llama:
                starts[what].append(time_to_ready(llama_ready, env))
            elif what == "classify":
                starts[what].append(classify_hi(env))
            elif what == "chat":
                starts[what].append(chat_on_terminal(chat_env))
            if starts.get(what):
                print(f"  {what}: {json.dumps(starts[what][-1], ensure_ascii=False)}", file=sys.stderr)

    tweets = [text for _, text in read_tsv(DATA_DIR / "tweeteval_sentiment_val.tsv")]
    texts = [text for text in tweets if model.count_tokens(text) <= 30][: args.messages]
    llm = open_llama(gguf, args.threads, repack=repack) if use_llama else None
    mood = LlamaMood(llm, prefix_ids, label_groups) if llm is not None else None
    print(f"mood reads side by side over {len(texts)} chat-length messages ...", file=sys.stderr)
    model.classify(texts[:2])
    if mood is not None:
        for text in texts[:2]:
            mood.read(message_ids(text))
    times: dict[str, list[float]] = {"moodmate": [], "llama": []}
    agree = 0
    for index, text in enumerate(texts):
        readers: list[tuple[str, Callable[[], object]]] = [
            ("moodmate", lambda text=text: model.classify([text]))
        ]
        if mood is not None:
            readers.append(("llama", lambda text=text: mood.read(message_ids(text))))
        if index % 2:
            readers.reverse()
        found: dict[str, object] = {}
        for name, read in readers:
            started = time.perf_counter()
            found[name] = read()
            times[name].append((time.perf_counter() - started) * 1000)
        if mood is not None:
            ours = found["moodmate"][0]  # type: ignore[index]
            theirs = found["llama"]
            probabilities = [p for _, p in ours.probabilities]
            agree += max(range(3), key=probabilities.__getitem__) == max(range(3), key=theirs.__getitem__)  # type: ignore[index,attr-defined]

    print("replies side by side ...", file=sys.stderr)
    model.replies.seed(7)
    stop_ids = set(model.replies.stop_ids)
    if llm is not None:
        llm.set_seed(7)
    replies: dict[str, list[dict[str, object]]] = {"moodmate": [], "llama": []}
    for chat_index, chat in enumerate(CHATS):
        history: list[ChatTurn] = []
        for user_text in chat:
            history.append(ChatTurn("user", user_text))
            system = with_language_hint(system_prompt_for(user_text), history)
            turns = reply_turns(history)
            runs: list[tuple[str, Callable[[], dict[str, object]]]] = [
                (
                    "moodmate",
                    lambda system=system, turns=turns: moodmate_reply(model, system, turns, REPLY_TOKENS),
                )
            ]
            if llm is not None:
                ids = model.replies.prompt_ids(system, turns)
                runs.append(("llama", lambda ids=ids: llama_reply(llm, ids, stop_ids, REPLY_TOKENS)))
            if chat_index % 2:
                runs.reverse()
            for name, run_reply in runs:
                replies[name].append({"user": user_text, **run_reply()})
            ours = next(reply for reply in reversed(replies["moodmate"]))
            history.append(ChatTurn("assistant", clean_reply(str(ours["text"]), user_text)))
    in_process_rss = rss_mb()

    def reply_figure(name: str, key: str) -> float:
        return _median([float(reply[key]) for reply in replies[name]])  # type: ignore[arg-type]

    ready_m = [run["ready_s"] for run in starts["moodmate"]]
    ready_l = [run["ready_s"] for run in starts["llama"]]
    rows = [
        (
            "load to ready, fresh process, warm cache (s)",
            _spread(ready_m, 2),
            _spread(ready_l, 2) if use_llama else "-",
            _ratio(_median(ready_l) / _median(ready_m)),
        ),
        (
            "… of which llama.cpp's model load, before its prefix pass (s)",
            "",
            _spread([run["loaded_s"] for run in starts["llama"]], 2) if use_llama else "-",
            "",
        ),
        (
            "RSS after its first mood read (MB)",
            _spread([run.get("read_rss_mb", math.nan) for run in starts["moodmate"]], 0),
            "",
            "",
        ),
        (
            "RSS at ready (MB)",
            _spread([run["rss_mb"] for run in starts["moodmate"]], 0),
            _spread([run["rss_mb"] for run in starts["llama"]], 0) if use_llama else "-",
            "",
        ),
    ]
    for label, fraction in (("p50", 0.5), ("p95", 0.95)):
        ours, theirs = percentile(times["moodmate"], fraction), percentile(times["llama"], fraction)
        rows.append(
            (
                f"mood read {label}, chat-length message, prefix cached (ms)",
                f"{ours:.0f}",
                f"{theirs:.0f}" if use_llama else "-",
                _ratio(theirs / ours) if use_llama else "-",
            )
        )
    ttft_m, ttft_l = reply_figure("moodmate", "ttft_ms"), reply_figure("llama", "ttft_ms")
    rate_m, rate_l = reply_figure("moodmate", "tokens_per_s"), reply_figure("llama", "tokens_per_s")
    rows += [
        ("reply time to first token p50 (ms)", f"{ttft_m:.0f}", f"{ttft_l:.0f}", _ratio(ttft_l / ttft_m)),
        ("reply decode p50 (tokens/s)", f"{rate_m:.1f}", f"{rate_l:.1f}", _ratio(rate_m / rate_l)),
        (
            "`echo hi \\| moodmate classify`, whole process (s)",
            _spread([run["wall_s"] for run in starts["classify"]], 2),  # type: ignore[misc]
            "",
            "",
        ),
        (
            "`echo hi \\| moodmate classify`, peak RSS (MB)",
            _spread([run["peak_rss_mb"] for run in starts["classify"]], 0),  # type: ignore[misc]
            "",
            "",
        ),
        (
            "`moodmate chat`, time to prompt (s)",
            _spread([run["prompt_s"] for run in starts["chat"]], 2),
            "",
            "",
        ),
        (
            "`moodmate chat`, time to first answer (s)",
            _spread([run["first_answer_s"] for run in starts["chat"]], 2),
            "",
            "",
        ),
    ]
    print(
        f"\nmodel={settings.model} weights={getattr(model, 'weights', '?')} threads={args.threads} "
        f"runs={args.runs} messages={len(texts)} llama.cpp repack={'on' if repack else 'off'}"
    )
    print_table(rows)
    if mood is not None:
        print(f"\nmood labels agreeing between the two: {agree} of {len(texts)}")
    print(f"this process's RSS (both models loaded): {in_process_rss:.0f} MB")
    for name in ("moodmate", "llama"):
        if replies[name]:
            print(f"\nsample replies, {name}:")
        for reply in replies[name]:
            print(f"  user: {reply['user']}\n  {name}: {str(reply['text']).strip()[:300]}")
    if args.first_run:
        print("first start on an empty cache ...", file=sys.stderr)
        first = first_run(args.threads)
        print(
            f"\nfirst start on an empty cache, `echo hi | moodmate classify`: {first['wall_s']:.1f} s to the "
            f"answer ({first['output']}), peak RSS {first['peak_rss_mb']:.0f} MB; progress bars: "
            + "; ".join(map(str, first["bars"]))  # type: ignore[call-overload]
        )
    print(f"\nclassify said: {starts['classify'][-1]['output'] if starts['classify'] else '-'}")
    if args.json is not None:
        payload = {"rows": rows, "starts": starts, "mood_ms": times, "replies": replies, "agree": agree}
        args.json.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
