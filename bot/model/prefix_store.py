"""Few-shot prefix key/values kept on disk, so a restart skips the prefix passes (~4 s of a cold start).

A file is named by a hash of everything its tensors depend on: the model's weights (see
:func:`weights_identity`), how they run (float32 or which int8 layer kind), the library versions and the
prefix's token ids. A changed prompt, model or library simply misses and writes a new file; each
hit marks its file as used, and a save keeps only the most recently used files (``MAX_FILES``), so
the files of old prompts, models and versions do not pile up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]

#: Most prefix files kept in one directory (each model and prompt language uses one; ~9 MB for the
#: bundled Qwen model's English prefix).
MAX_FILES = 16


class PrefixStore:
    """Saves and finds the key/values of token-id prefixes for one model as it runs (``identity``)."""

    def __init__(self, directory: Path, identity: str, *, max_files: int = MAX_FILES) -> None:
        self.directory = directory
        self.identity = identity
        self.max_files = max_files

    def path_for(self, prefix_ids: Sequence[int]) -> Path:
        material = f"{self.identity}|{','.join(map(str, prefix_ids))}"
        return self.directory / f"{hashlib.sha256(material.encode()).hexdigest()[:32]}.safetensors"

    def load(self, prefix_ids: Sequence[int]) -> KeyValues | None:
        """The stored key/values for ``prefix_ids``, or None when there are none (or they are unreadable)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path_for(prefix_ids)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
            layers = len(tensors) // 2
            key_values = [(tensors[f"keys.{index}"], tensors[f"values.{index}"]) for index in range(layers)]
        except (OSError, KeyError, SafetensorError) as error:
            logger.warning("Ignoring the unreadable prefix cache %s (%s)", path, error)
            return None
        if not key_values or key_values[0][0].shape[-2] != len(prefix_ids):
            logger.warning("Ignoring the prefix cache %s: it does not fit its prefix", path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: pruning removes the least recently used files first
        return key_values

    def save(self, prefix_ids: Sequence[int], key_values: KeyValues) -> None:
        """Store ``key_values`` atomically; a failure to write is logged and otherwise ignored."""
        from safetensors.torch import save_file

        path = self.path_for(prefix_ids)
        tensors: dict[str, torch.Tensor] = {}
        for index, (keys, values) in enumerate(key_values):
            tensors[f"keys.{index}"] = keys.contiguous()
            tensors[f"values.{index}"] = values.contiguous()
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_file(tensors, temporary)
            temporary.replace(path)
        except OSError as error:
            logger.warning("Could not save the prefix cache %s (%s)", path, error)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        self._prune()

    def _prune(self) -> None:
        """Delete the least recently used prefix files beyond ``max_files`` (another process may have
        just used one: it then recomputes its prefix once)."""
        used: list[tuple[int, Path]] = []
        for child in self.directory.glob("*.safetensors"):
            with contextlib.suppress(OSError):
                used.append((child.stat().st_mtime_ns, child))
        used.sort(reverse=True)
        for _, stale in used[self.max_files :]:
            with contextlib.suppress(OSError):
                stale.unlink()
                logger.info("Removed the least recently used prefix cache %s", stale.name)


def weights_identity(location: Path | str, commit: str | None) -> str | None:
    """What names a model's weights: a directory's files (name, size, mtime) or a hub id's commit.

    None for a hub id whose commit is unknown: its weights could change unseen, so nothing is stored.
    """
    path = Path(location)
    if not path.is_dir():
        return f"hub:{location}@{commit}" if commit else None
    files = sorted(
        child
        for child in path.iterdir()
        if child.suffix in {".safetensors", ".bin", ".json"} and child.is_file()
    )
    described = [f"{child.name}:{child.stat().st_size}:{child.stat().st_mtime_ns}" for child in files]
    return f"dir:{path.resolve()}|{';'.join(described)}"
