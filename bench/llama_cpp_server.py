"""``python -m llama_cpp.server``, with llama.cpp's weight repacking ("extra buffer types") off on AMX CPUs.

llama-cpp-python 0.3.36 built for a CPU with AMX repacks weights for AMX, and its first decode of more
than one token then crashes the process (SIGSEGV in ``llama_decode``); with ``use_extra_bufts`` off
the same build runs. On a CPU without AMX repacking is left on, as llama.cpp ships.
Everything else is llama_cpp.server as it ships:

    python bench/llama_cpp_server.py --model model.gguf --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX (an ``amx_*`` flag in ``/proc/cpuinfo``), where repacking crashes."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as source:
                cpuinfo = source.read()
        except OSError:
            return False
    return any(flag.startswith("amx_") for line in cpuinfo.splitlines() if line.startswith("flags")
               for flag in line.split(":", 1)[-1].split())  # fmt: skip


@contextlib.contextmanager
def repacking_off() -> Iterator[None]:
    """llama.cpp models loaded inside this block keep their weights as they are (no extra buffer types)."""
    import llama_cpp.llama_cpp as bindings

    defaults = bindings.llama_model_default_params

    def without_repacking():  # type: ignore[no-untyped-def]
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        bindings.llama_model_default_params = defaults


if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    with repacking_off() if cpu_has_amx() else contextlib.nullcontext():
        main()
