"""``python -m llama_cpp.server`` with llama.cpp's weight repacking ("extra buffer types") turned off.

llama-cpp-python 0.3.36 built for a CPU with AMX (the machines here) repacks weights for AMX, and its
first decode of more than one token then crashes the process (SIGSEGV in ``llama_decode``); with
``use_extra_bufts`` off the same build runs. Everything else is llama_cpp.server as it ships:

    python bench/llama_cpp_server.py --model model.gguf --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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

    with repacking_off():
        main()
