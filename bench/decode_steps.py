"""Decoding steps after conversations of several lengths, with the long-cache attention on and off, in turn.

Usage (from the project root)::

    python bench/decode_steps.py [--rounds 5] [--steps 32] [--turns 0 10 26]

For each history (``--turns`` earlier exchanges of a fixed story before the last message), the reply
prompt is run once; then each round times ``--steps`` one-token steps from a copy of its cache twice:
with :func:`~bot.model.cpu_attention.one_query_attention` as shipped (its grouped call from
``GROUPED_QUERY_KEYS`` keys on) and with that limit out of reach (``enable_gqa`` everywhere). Prints
the prompt's length, each round's ms per step, the medians and their ratio. Over a cache shorter than
the limit both run the same call, so that row's ratio shows the machine's noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STORY = (
    "Today was long. I woke up late, missed the bus, and my manager asked about the report I had not "
    "finished. At lunch my friend called to say she is moving away next month, and I do not know how to "
    "feel about it. "
)
ANSWER = "I hear you. That sounds like a lot to carry at once; what weighs on you most?"
MESSAGE = "I had a rough day at work, my boss yelled at me in front of everyone."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32, help="one-token steps timed per round and setting")
    parser.add_argument("--turns", type=int, nargs="+", default=[0, 10, 26], help="earlier exchanges")
    args = parser.parse_args(argv)

    import torch

    from bot.bootstrap import load_settings, model_options
    from bot.model import cpu_attention
    from bot.model.base import ChatTurn
    from bot.model.loader import load_model

    model = load_model(model_options(load_settings()), progress=False)
    for module in model.decoder.model.modules():
        if hasattr(module, "pack"):
            module.pack()  # fbgemm's packed weights, as after a start's background packing
    decoder, shipped = model.decoder, cpu_attention.GROUPED_QUERY_KEYS
    settings = {f"grouped from {shipped} keys": shipped, "enable_gqa everywhere": sys.maxsize}
    print(f"model={model.name} weights={model.weights} threads={torch.get_num_threads()}")
    columns = " | ".join(f"{label}, ms a step" for label in settings)
    print(f"| prompt tokens | {columns} | speed of the grouped call |")
    print("| --- | --- | --- | --- |")
    for turns in args.turns:
        history: list[ChatTurn] = []
        for part in range(turns):
            history += [ChatTurn("user", f"{STORY}(part {part})"), ChatTurn("assistant", ANSWER)]
        history.append(ChatTurn("user", MESSAGE))
        ids = model.replies.prompt_ids("You are a kind companion.", history)
        times: dict[str, list[float]] = {label: [] for label in settings}
        with torch.inference_mode():
            cache = decoder.new_cache()
            decoder.next_logits(torch.tensor([ids]), cache, decoder.lean_pass)
            prompt = decoder.cache_tensors(cache)
            for _ in range(args.rounds):
                for label, limit in settings.items():
                    cpu_attention.GROUPED_QUERY_KEYS = limit
                    steps = decoder.seeded_cache(prompt)
                    started = time.perf_counter()
                    for step in range(args.steps):
                        decoder.next_logits(torch.tensor([[100 + step]]), steps, decoder.lean_pass)
                    times[label].append((time.perf_counter() - started) / args.steps * 1000)
        cpu_attention.GROUPED_QUERY_KEYS = shipped
        medians = [statistics.median(values) for values in times.values()]
        cells = [
            f"{median:.1f} ({', '.join(f'{value:.1f}' for value in values)})"
            for median, values in zip(medians, times.values(), strict=True)
        ]
        print(f"| {len(ids)} | " + " | ".join(cells) + f" | {medians[1] / medians[0]:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
