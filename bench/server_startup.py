"""Start the bot in server mode, answer one message, and print how long the start took and the RSS.

    MOODMATE_INFERENCE_URL=http://127.0.0.1:8000/v1 python bench/server_startup.py

Prints one JSON line: ``ready_s`` (from this process's start, interpreter included, to the app
started: settings, storage, server connection and mood-mode detection), ``answered_s`` (to the first
message answered), ``cpu_s`` (CPU time used, which a busy machine does not inflate), ``rss_mb`` (peak
resident memory), and whether torch or transformers was imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _since_process_start() -> float:
    """Seconds since this process started (from /proc, so the interpreter's own start counts)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime", encoding="ascii") as uptime:
        now = float(uptime.read().split()[0])
    return now - started_ticks / ticks


def _peak_rss_mb() -> float:
    """Peak RSS of this program (VmHWM: unlike ru_maxrss, it does not keep a parent's peak across exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _main() -> dict[str, object]:
    from bot.bootstrap import bootstrap, load_settings
    from bot.types import IncomingMessage, Platform

    settings = load_settings()
    if not settings.uses_inference_server:
        raise SystemExit("set MOODMATE_INFERENCE_URL to the server to measure")
    app = await bootstrap(settings)
    async with app:
        ready = _since_process_start()
        incoming = IncomingMessage(
            Platform.CONSOLE, "startup", "startup", "startup", "Hi! How are you today?"
        )
        [reply] = await app.engine.handle(incoming)
        answered = _since_process_start()
    return {
        "reply_kind": reply.kind.value,
        "ready_s": round(ready, 3),
        "answered_s": round(answered, 3),
        "cpu_s": round(_cpu_seconds(), 3),
        "rss_mb": round(_peak_rss_mb(), 1),
        "torch_imported": "torch" in sys.modules,
        "transformers_imported": "transformers" in sys.modules,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main())))
