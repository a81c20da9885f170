"""``python -m llama_cpp.server`` with llama.cpp's weight repacking ("extra buffer types") turned off.

llama-cpp-python 0.3.36 built for a CPU with AMX (the machines here) repacks weights for AMX, and its
first decode of more than one token then crashes the process (SIGSEGV in ``llama_decode``); with
``use_extra_bufts`` off the same build runs. Everything else is llama_cpp.server as it ships:

    python bench/llama_cpp_server.py --model model.gguf --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import llama_cpp.llama_cpp as bindings

_default_model_params = bindings.llama_model_default_params


def _model_params_without_repacking():  # type: ignore[no-untyped-def]
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


bindings.llama_model_default_params = _model_params_without_repacking

if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    main()
