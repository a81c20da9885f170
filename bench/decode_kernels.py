"""Decoding steps on fbgemm against ``torch._int_mm``, the same loaded model, in turn.

Usage (from the project root)::

    python bench/decode_kernels.py [--rounds 3] [--replies 2] [--tokens 64]

For a model whose layers are a hybrid int8 kind (``HybridInt8Linear`` or ``WideHybridInt8Linear``:
the int8 weights for ``_int_mm`` and fbgemm's packed copy both in memory), each round writes
``--replies`` replies with the decoding steps on fbgemm (as moodmate runs them), then as many with
those steps on ``_int_mm`` from the same int8 weights (the output head stays on fbgemm both times).
Prints the decode tokens/s of each reply, the medians and their ratio. Rounds alternate, so a busy
moment slows both alike. A model with another kind prints which it has and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.start_bench import moodmate_reply

PROMPT = "You are a kind companion."
MESSAGE = "I had a rough day at work, my boss yelled at me in front of everyone."


@contextlib.contextmanager
def steps_on_int_mm() -> Iterator[None]:
    """Hybrid layers run one token on ``_int_mm`` (their several-token path) while this lasts."""
    from bot.model.cpu_weights import HybridInt8Linear

    original = HybridInt8Linear._one_token
    HybridInt8Linear._one_token = HybridInt8Linear._several_tokens  # type: ignore[method-assign]
    try:
        yield
    finally:
        HybridInt8Linear._one_token = original  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replies", type=int, default=2, help="replies per kernel and round")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply at most")
    args = parser.parse_args(argv)

    from bot.bootstrap import load_settings, model_options
    from bot.model import cpu_weights
    from bot.model.base import ChatTurn
    from bot.model.loader import load_model

    model = load_model(model_options(load_settings()), progress=False)
    layers = list(model.decoder.model.modules())
    if not any(isinstance(layer, cpu_weights.HybridInt8Linear) for layer in layers):
        print(f"weights={model.weights}: not a hybrid kind, so decoding has one kernel only")
        return 0
    for layer in layers:
        if isinstance(layer, cpu_weights.PackedInt8Linear):
            layer.pack()
    turns = [ChatTurn("user", MESSAGE)]
    rates: dict[str, list[float]] = {"fbgemm": [], "_int_mm": []}
    moodmate_reply(model, PROMPT, turns, args.tokens)  # warm-up
    for round_number in range(1, args.rounds + 1):
        for kernel in rates:
            context = steps_on_int_mm() if kernel == "_int_mm" else contextlib.nullcontext()
            with context:
                measured = [
                    float(moodmate_reply(model, PROMPT, turns, args.tokens)["tokens_per_s"])
                    for _ in range(args.replies)
                ]
            rates[kernel] += measured
            print(f"round {round_number} {kernel}: " + ", ".join(f"{rate:.1f}" for rate in measured))
    fbgemm, int_mm = statistics.median(rates["fbgemm"]), statistics.median(rates["_int_mm"])
    print(f"weights={model.weights}")
    print(
        f"decode tokens/s p50: fbgemm steps {fbgemm:.1f}, _int_mm steps {int_mm:.1f}, "
        f"ratio {fbgemm / int_mm:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
