"""The start snapshot: what a start would otherwise compute, kept in one file per model, CPU and code.

A full load reads the half-precision checkpoint through transformers, times the int8 kernels, converts
every linear layer, checks the lean pass against transformers' and builds the tokenizer: 8-14 s of
every start. The snapshot keeps the result: the model rebuilt from :mod:`bot.model.lean_modules`
with its int8 weights in their final layout (and the int8 layer kind chosen once, so the arithmetic no
longer changes between restarts), the label head, and the tokenizer as :mod:`bot.model.fast_tokenizer`
runs it. It is read with ``torch.load(mmap=True)``: the weights are mapped from the file, not copied.
The few-shot prefixes' key/values stay in :mod:`bot.model.prefix_store`, under the identity recorded here.

``<cache>/start/<key>.pt``, where the key covers the model's checksum, whether it is quantized, the
mood prompt, the code that computes what is stored, the torch version and the CPU's capability: any
change misses and writes a new file (the older ones are removed). A file that cannot be read, or
holds another key, is ignored: the caller loads in full and writes it again. Files are written to a
temporary name and renamed; :func:`snapshot_lock` lets concurrent first starts take turns, so the
second reads what the first wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bot.model.cpu_weights import release_free_memory

logger = logging.getLogger(__name__)

#: Bumped whenever what the file holds changes shape.
SNAPSHOT_FORMAT = "1"

#: Snapshot files kept in ``<cache>/start`` (the most recently written).
MAX_SNAPSHOTS = 2

#: How long a start waits for another process writing the same snapshot before loading on its own.
LOCK_TIMEOUT_S = 900.0

#: The modules whose code decides the stored numbers and objects; their source is part of the key.
_CODE_MODULES = (
    "bot.model.cpu_weights",
    "bot.model.fused_projections",
    "bot.model.lean_modules",
    "bot.model.lean_pass",
    "bot.model.cpu_attention",
    "bot.model.fast_tokenizer",
    "bot.model.start_snapshot",
)


@dataclass
class StartSnapshot:
    """Everything a start from the snapshot needs besides the prefix key/values."""

    name: str
    model: nn.Module  # a lean_modules.CausalLM
    tokenizer: object  # a fast_tokenizer.ChatTokenizer
    label_head: torch.Tensor
    label_bias: torch.Tensor | None
    label_groups: dict[str, list[list[int]]]
    weights: str
    prefix_identity: str | None
    extra: dict[str, object] = field(default_factory=dict)


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "replace")).hexdigest()


def prompt_version() -> str:
    """A digest of the mood prompt (instruction, examples, answer words, message format)."""
    from bot.model import mood_prompt

    return _digest(
        mood_prompt.MOOD_INSTRUCTION,
        repr(mood_prompt.FEW_SHOT),
        repr(mood_prompt.LABEL_WORDS),
        mood_prompt.USER_FORMAT,
    )[:16]


def code_version() -> str:
    """A digest of the source of the modules that compute what a snapshot holds."""
    import importlib.util

    digest = hashlib.sha256(SNAPSHOT_FORMAT.encode())
    for name in _CODE_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        digest.update(name.encode())
        if origin:
            with contextlib.suppress(OSError):
                digest.update(Path(origin).read_bytes())
    return digest.hexdigest()[:16]


def snapshot_key(model_checksum: str, *, quantize: bool) -> str:
    """The file key of a model (``model_checksum`` names its weights) as this code and CPU run it."""
    capability = torch.backends.cpu.get_cpu_capability()
    return _digest(
        SNAPSHOT_FORMAT,
        model_checksum,
        f"quantize={quantize}",
        f"torch {torch.__version__}",
        capability,
        prompt_version(),
        code_version(),
    )[:32]


def snapshot_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / "start" / f"{key}.pt"


@contextlib.contextmanager
def snapshot_lock(path: Path) -> Iterator[None]:
    """Held while a process reads or builds ``path``: concurrent first starts build it once."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_suffix(".lock")))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        logger.warning(
            "Another process has held %s for %.0f s; loading without it", lock.lock_file, LOCK_TIMEOUT_S
        )
        yield
        return
    try:
        yield
    finally:
        lock.release()


def load_snapshot(path: Path, key: str) -> StartSnapshot | None:
    """The snapshot at ``path`` if it is readable and holds ``key``; None otherwise (logged)."""
    if not path.is_file():
        return None
    started = time.perf_counter()
    try:
        stored = torch.load(path, mmap=True, weights_only=False)
        if (
            not isinstance(stored, dict)
            or stored.get("format") != SNAPSHOT_FORMAT
            or stored.get("key") != key
        ):
            raise ValueError("it holds another format or key")
        snapshot = stored["snapshot"]
        if not isinstance(snapshot, StartSnapshot):
            raise TypeError(f"it holds a {type(snapshot).__name__}")
    except Exception as error:  # a truncated or foreign file: load in full and write it again
        logger.warning("Ignoring the start snapshot %s (%s: %s)", path, type(error).__name__, error)
        return None
    logger.info("Read the start snapshot %s in %.2f s", path.name, time.perf_counter() - started)
    return snapshot


def save_snapshot(path: Path, key: str, snapshot: StartSnapshot) -> bool:
    """Write ``snapshot`` to ``path`` atomically and remove older snapshots; False if it could not be."""
    started = time.perf_counter()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": SNAPSHOT_FORMAT, "key": key, "snapshot": snapshot}, temporary)
        os.replace(temporary, path)
    except Exception as error:
        logger.warning("Could not write the start snapshot %s (%s: %s)", path, type(error).__name__, error)
        with contextlib.suppress(OSError):
            temporary.unlink()
        return False
    logger.info("Wrote the start snapshot %s in %.1f s", path.name, time.perf_counter() - started)
    _prune(path.parent, keep=path)
    return True


def _prune(directory: Path, *, keep: Path) -> None:
    files: list[tuple[int, Path]] = []
    for child in directory.glob("*.pt"):
        with contextlib.suppress(OSError):
            files.append((child.stat().st_mtime_ns, child))
    files.sort(reverse=True)
    for _, stale in files[MAX_SNAPSHOTS:]:
        if stale != keep:
            with contextlib.suppress(OSError):
                stale.unlink()
                logger.info("Removed the old start snapshot %s", stale.name)


def share_tied_int8(model: Any) -> bool:
    """Let the output head use the embedding's int8 rows where they are the same numbers (tied weights).

    Both round each row to ±127 with its own scale, so a tied checkpoint's two int8 copies are equal;
    one of them is dropped (136 MB for the bundled model). Returns whether they were shared.
    """
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    blocks = list(getattr(head, "blocks", [head]))
    if not hasattr(embedding, "weight_int8") or not all(hasattr(block, "weight_int8") for block in blocks):
        return False
    start = 0
    for block in blocks:
        rows = block.weight_int8.shape[0]
        same = torch.equal(block.weight_int8, embedding.weight_int8[start : start + rows]) and torch.equal(
            block.weight_scale, embedding.weight_scale[start : start + rows]
        )
        if not same:
            return False
        start += rows
    start = 0
    for block in blocks:
        rows = block.weight_int8.shape[0]
        block.weight_int8 = embedding.weight_int8[start : start + rows]
        block.weight_scale = embedding.weight_scale[start : start + rows]
        start += rows
    return True


def build_snapshot(model: Any) -> StartSnapshot | None:
    """The snapshot of a fully loaded ``TransformersModel``, or None where a start from it could differ.

    Only a model on the lean pass (checked against transformers' at this load) whose modules
    :func:`~bot.model.lean_modules.lean_copy` rebuilds and whose tokenizer :class:`ChatTokenizer`
    reproduces (on probes and the mood prompts) gets one.
    """
    from bot.model.fast_tokenizer import ChatTokenizer, matches
    from bot.model.lean_modules import lean_copy

    decoder = model.decoder
    if decoder.lean_pass is None:
        return None
    lean = lean_copy(decoder.model)
    tokenizer = ChatTokenizer.from_transformers(decoder.tokenizer)
    if lean is None or tokenizer is None:
        return None
    prompts = [decoder.decode(model.moods.prefix(language).prefix_ids) for language in model.moods.languages]
    if not matches(tokenizer, decoder.tokenizer, prompts):
        logger.info("No start snapshot: the lean tokenizer does not reproduce this model's")
        return None
    share_tied_int8(lean)
    head = model.moods.label_head
    store = decoder.prefix_store
    return StartSnapshot(
        name=model.name,
        model=lean,
        tokenizer=tokenizer,
        label_head=head.weight,
        label_bias=head.bias,
        label_groups={language: list(groups) for language, groups in head.groups.items()},
        weights=decoder.weights,
        prefix_identity=store.identity if store is not None else None,
    )


def pack_in_background(model: nn.Module) -> threading.Thread | None:
    """Pack fbgemm's weights of every layer that waits for it, in a daemon thread (None if none waits).

    A layer used before its turn packs itself first; the numbers are the same either way. The thread
    goes from the last layer to the first: the output head first (a reply's, not a mood read's), then
    the decoder's layers towards the first mood read, which packs them from the first as it reaches
    them. On an AMD EPYC (fbgemm for every product) a fresh process read "hi" and showed its reply's
    first text 1.7-2.6 s after loading, against 4.1-4.4 s going first to last (three runs each).
    """
    waiting: list[Any] = [
        module for module in model.modules() if getattr(module, "_packed_params", False) is None
    ][::-1]
    if not waiting:
        return None

    def pack_all() -> None:
        started = time.perf_counter()
        for module in waiting:
            module.pack()
        release_free_memory()  # packing's temporaries: 1.61 GB RSS before, 1.36 GB after (bundled model)
        logger.info("Packed %d layers for fbgemm in %.1f s", len(waiting), time.perf_counter() - started)

    thread = threading.Thread(target=pack_all, name="moodmate-pack", daemon=True)
    thread.start()
    return thread
