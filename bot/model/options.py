"""What loading a model needs to know, as plain values (the composition root fills them from settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """An OpenAI-compatible inference server to connect to instead of loading a local model."""

    url: str
    api_key: str | None = None
    #: The served model's id; None: the one the server lists.
    model: str | None = None
    timeout: float = 120.0
    concurrency: int = 4
    max_input_chars: int = 4000


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Which model to load and how (``model`` as ``MOODMATE_MODEL`` names it, see ``resolve_model``)."""

    model: str
    cache_dir: Path
    quantize: bool = True
    #: CPU threads for torch; 0: one per core.
    threads: int = 0
    max_input_chars: int = 4000
    #: Where set, model calls go to this server and no local model is loaded.
    server: ServerOptions | None = None
