"""Find, convert (once, into the cache) and load the configured language model.

``MOODMATE_MODEL`` may name a bundled model (``qwen2.5-coder-0.5b``, the default, or
``smollm2-135m``), a ``.gguf`` file, a local Hugging Face model directory, or a Hugging Face model id.
GGUF files are converted once into a half-precision safetensors directory under the cache dir; the
conversion is written to a temporary directory and renamed into place, so an interrupted run never
leaves a broken cache behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bot.errors import ModelNotFoundError
from bot.model.base import LanguageModel
from bot.model.bundled import BundledModel, find_bundled, join_parts, part_paths, single_file, verify_sha256
from bot.model.options import ModelOptions
from bot.model.versions import transformers_version

logger = logging.getLogger(__name__)

#: Bumped whenever the cache layout or conversion changes, so old caches are rebuilt.
CACHE_FORMAT = "v1"
_MARKER = "moodmate-cache.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

SourceKind = Literal["bundled", "gguf", "directory", "hub"]


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What ``MOODMATE_MODEL`` points at."""

    kind: SourceKind
    name: str
    path: Path | None = None
    bundled: BundledModel | None = None


def resolve_model(spec: str) -> ModelSource:
    """Work out what kind of model ``spec`` names; raises ``ModelNotFoundError`` for impossible specs."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFoundError(
            "MOODMATE_MODEL is empty: set it to qwen2.5-coder-0.5b or a model directory."
        )
    bundled = find_bundled(spec)
    if bundled is not None:
        return ModelSource("bundled", bundled.name, bundled=bundled)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"The directory {path} has no config.json: set MOODMATE_MODEL to a Hugging Face model "
                "directory, a .gguf file or qwen2.5-coder-0.5b."
            )
        return ModelSource("directory", path.name, path=path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"The file {path} is not a .gguf model: set MOODMATE_MODEL to a .gguf file, a model "
                "directory or qwen2.5-coder-0.5b."
            )
        return ModelSource("gguf", path.stem, path=path.resolve())
    looks_like_path = spec.startswith(("/", ".", "~")) or spec.lower().endswith(".gguf") or "\\" in spec
    if looks_like_path or not _HUB_ID.match(spec):
        raise ModelNotFoundError(
            f"No model file or directory at {spec}: set MOODMATE_MODEL to an existing path or to "
            "qwen2.5-coder-0.5b."
        )
    return ModelSource("hub", spec)


def load_model(options: ModelOptions, *, progress: bool = True) -> LanguageModel:
    """Load the model ``options.model`` names, converting and caching it first if needed (blocking).

    A start snapshot (see :mod:`bot.model.start_snapshot`) under ``<cache>/start`` is used where one
    matches; otherwise the model is loaded in full and the snapshot written for the next start.
    With ``options.server`` set, connect to that server instead: no local model is loaded and neither
    torch nor transformers is imported.
    """
    if options.server is not None:
        from bot.model.server.model import ServerModel

        return ServerModel.connect(options.server)
    started = time.perf_counter()
    source = resolve_model(options.model)
    checksum = model_checksum(source) if options.quantize else None  # float32 (~2 GB) is not kept
    if checksum is None:
        return _full_load(source, options, progress=progress)
    from bot.model import start_snapshot

    key = start_snapshot.snapshot_key(checksum, quantize=options.quantize)
    path = start_snapshot.snapshot_path(Path(options.cache_dir), key)
    with start_snapshot.snapshot_lock(path):  # a concurrent first start waits, then reads the snapshot
        snapshot = start_snapshot.load_snapshot(path, key)
        model: LanguageModel
        if snapshot is not None:
            from bot.model.transformers_model import TransformersModel

            model = TransformersModel.from_snapshot(
                snapshot,
                threads=options.threads,
                max_input_chars=options.max_input_chars,
                prefix_cache_dir=Path(options.cache_dir) / "prefix-kv",
                identity=model_identity(source),
                readout_files=readout_files(source.name, Path(options.cache_dir)),
            )
            logger.info("Model %s loaded in %.1f s", source.name, time.perf_counter() - started)
            return model
        model = _full_load(source, options, progress=progress)
        built = start_snapshot.build_snapshot(model)
        if built is not None:
            start_snapshot.save_snapshot(path, key, built)
    return model


def _full_load(source: ModelSource, options: ModelOptions, *, progress: bool) -> LanguageModel:
    """Convert (once) and load ``source`` through transformers."""
    from bot.model.transformers_model import TransformersModel

    started = time.perf_counter()
    directory = prepare_model_directory(source, Path(options.cache_dir), progress=progress)
    with _transformers_progress(False):
        model = TransformersModel.load(
            directory if directory is not None else source.name,
            name=source.name,
            quantize=options.quantize,
            threads=options.threads,
            max_input_chars=options.max_input_chars,
            prefix_cache_dir=Path(options.cache_dir) / "prefix-kv",
            progress=progress,
            identity=model_identity(source),
            readout_files=readout_files(source.name, Path(options.cache_dir)),
        )
    logger.info("Model %s loaded in %.1f s", source.name, time.perf_counter() - started)
    return model


def model_checksum(source: ModelSource) -> str | None:
    """What names ``source``'s weights for the start snapshot's key (None for a hub id: no snapshot).

    A bundled model's published sha256; a file's or directory's paths, sizes and modification times.
    """
    if source.kind == "bundled":
        assert source.bundled is not None
        return f"bundled:{source.bundled.name}:{source.bundled.sha256}"
    if source.path is None:
        return None
    if source.kind == "gguf":
        stat = source.path.stat()
        return f"gguf:{source.path}|{stat.st_size}|{stat.st_mtime_ns}"
    from bot.model.prefix_store import weights_identity

    return weights_identity(source.path, None)


def model_identity(source: ModelSource) -> str | None:
    """What a mood readout file is keyed to: a bundled model's published sha256 wherever it is
    installed, else what ``model_checksum`` names (None for a hub id: the loaded files name it)."""
    if source.bundled is not None:
        return f"bundled:{source.bundled.name}:sha256={source.bundled.sha256}"
    return model_checksum(source)


def readout_files(model_name: str, cache_dir: Path) -> tuple[Path, ...]:
    """The mood readout files tried for ``model_name``: the shipped one, then ``moodmate tune-mood``'s."""
    from bot.model.readout import packaged_readout_path, tuned_readout_path

    return (packaged_readout_path(model_name), tuned_readout_path(cache_dir, model_name))


def describe_local_model(options: ModelOptions) -> str:
    """One line on the configured local model (for ``moodmate doctor``); loads and converts nothing."""
    try:
        source = resolve_model(options.model)
    except ModelNotFoundError as error:
        return f"local {options.model!r}: {error}"
    if source.kind == "bundled":
        assert source.bundled is not None
        bundled = source.bundled
        cached = _is_complete(_cache_root(Path(options.cache_dir)) / f"{bundled.name}-{bundled.sha256[:12]}")
        if cached:
            return f"local {source.name} (bundled): converted and cached, ready"
        try:
            part_paths(bundled)
        except ModelNotFoundError as error:
            return f"local {source.name} (bundled): not installed: {error}"
        return f"local {source.name} (bundled): installed, converted on first start (a minute or two)"
    if source.kind == "hub":
        return f"local {source.name} (Hugging Face id): downloaded and loaded on first start"
    return f"local {source.name} ({source.kind} at {source.path})"


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Hide transformers' own progress bars ("Loading weights") while loading, unless ``enabled``."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            transformers_logging.enable_progress_bar()


def prepare_model_directory(source: ModelSource, cache_dir: Path, *, progress: bool = True) -> Path | None:
    """The local Hugging Face directory to load ``source`` from (None for a hub id).

    Bundled models and GGUF files are converted into ``cache_dir`` on first use.
    """
    if source.kind == "directory":
        return source.path
    if source.kind == "hub":
        return None
    if source.kind == "bundled":
        assert source.bundled is not None
        return _prepare_bundled(source.bundled, cache_dir, progress=progress)
    assert source.path is not None
    stat = source.path.stat()
    key_material = f"{source.path}|{stat.st_size}|{stat.st_mtime_ns}"
    key = f"{_safe_name(source.path.stem)}-{hashlib.sha1(key_material.encode()).hexdigest()[:12]}"
    target = _cache_root(cache_dir) / key
    if not _is_complete(target):
        convert_gguf(source.path, target, progress=progress, source_info={"path": str(source.path)})
    return target


@contextlib.contextmanager
def _attribute_replaced(owner: object, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """``owner.name`` replaced by ``make(original)`` inside the block, and put back after it."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _quiet_gguf_reader() -> contextlib.AbstractContextManager[None]:
    """Hide the bar transformers' GGUF reader draws with its own tqdm (transformers' switch misses it)."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return contextlib.nullcontext()
    if getattr(gguf_utils, "tqdm", None) is None:
        return contextlib.nullcontext()
    return _attribute_replaced(gguf_utils, "tqdm", lambda original: functools.partial(original, disable=True))


def _one_gguf_parse() -> contextlib.AbstractContextManager[None]:
    """Parse each GGUF file once while converting, instead of once per transformers loader.

    transformers builds a new ``gguf.GGUFReader`` for the tokenizer, the config and the weights (it
    imports the class at each call); each parses the whole vocabulary in Python (about 9.5 s of a 60 s
    first start, three times over).
    """
    try:
        import gguf
    except ImportError:
        return contextlib.nullcontext()
    return _attribute_replaced(gguf, "GGUFReader", _reading_once)


def _reading_once(read: Callable[..., Any]) -> Callable[..., Any]:
    """``read`` (a GGUF reader class), returning the reader it built before for the same file and mode."""
    parsed: dict[str, Any] = {}

    def reader(path: os.PathLike[str] | str, mode: Literal["r", "r+", "c"] = "r") -> Any:
        key = f"{os.path.realpath(path)}:{mode}"
        if key not in parsed:
            parsed[key] = read(path, mode)
        return parsed[key]

    return reader


def _prepare_bundled(bundled: BundledModel, cache_dir: Path, *, progress: bool) -> Path:
    target = _cache_root(cache_dir) / f"{bundled.name}-{bundled.sha256[:12]}"
    if _is_complete(target):
        return target
    part_paths(bundled)  # fail fast, with the install hint, when a package is missing
    single = single_file(bundled)
    if single is not None:
        verify_sha256(bundled, single, progress=progress)
        convert_gguf(single, target, progress=progress, source_info={"bundled": bundled.name})
        return target
    joined = cache_dir / "gguf" / bundled.gguf_name
    if not (joined.is_file() and joined.stat().st_size == bundled.size):
        join_parts(bundled, joined, progress=progress)
    else:
        verify_sha256(bundled, joined, progress=progress)
    convert_gguf(joined, target, progress=progress, source_info={"bundled": bundled.name})
    joined.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        joined.parent.rmdir()
    return target


def _cache_root(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / "models" / CACHE_FORMAT


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:60] or "model"


def _major(version_string: object) -> str:
    return str(version_string).split(".", 1)[0]


def write_cache_marker(directory: Path, source_info: dict[str, str]) -> None:
    """Mark ``directory`` as a finished conversion, noting the transformers version that wrote it."""
    marker = {"format": CACHE_FORMAT, "transformers": transformers_version(), **source_info}
    (directory / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished conversion this transformers reads as it was written.

    Another major version of transformers may read a saved config differently (5.x keeps the RoPE base
    in ``rope_parameters``, which 4.x ignores and silently falls back to a default), so a cache
    written by another major version is converted again.
    """
    marker_path = directory / _MARKER
    if not (marker_path.is_file() and (directory / "config.json").is_file()):
        return False
    try:
        written_by = json.loads(marker_path.read_text(encoding="utf-8")).get("transformers")
    except (OSError, ValueError, AttributeError):
        return False
    running = transformers_version()
    if _major(written_by) != _major(running):
        logger.info(
            "The cached model in %s was converted by transformers %s; converting it again for %s",
            directory,
            written_by or "an unrecorded version",
            running,
        )
        return False
    return True


def convert_gguf(
    gguf_path: Path, target: Path, *, progress: bool = True, source_info: dict[str, str] | None = None
) -> Path:
    """Convert a GGUF file into a half-precision safetensors model directory at ``target``, atomically."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    started = time.perf_counter()
    steps = tqdm(total=4, desc=f"converting {gguf_path.name}", unit="step", disable=not progress, leave=False)
    # One bar for the conversion, not transformers' three.
    with _transformers_progress(False), _quiet_gguf_reader(), _one_gguf_parse():
        try:
            steps.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            steps.update()
            steps.set_postfix_str("weights")
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
            steps.update()
            # The GGUF weights are dequantized now; drop the quantizer so save_pretrained accepts the model.
            # torch's stubs let a module's attributes be set only to a Tensor or a Module.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            largest = max(float(param.detach().abs().max()) for param in model.parameters())
            # transformers wraps PreTrainedModel.to with functools.wraps, which mypy reads as unbound.
            model.to(torch.float16 if largest < 60000 else torch.bfloat16)  # type: ignore[arg-type]
            steps.set_postfix_str("saving")
            model.save_pretrained(str(temporary))
            tokenizer.save_pretrained(str(temporary))
            steps.update()
            write_cache_marker(temporary, {"gguf": gguf_path.name, **(source_info or {})})
            if target.exists():  # a concurrent or earlier broken attempt: replace it
                shutil.rmtree(target, ignore_errors=True)
            os.replace(temporary, target)
            steps.update()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelNotFoundError(
                f"Could not convert {gguf_path.name} ({type(error).__name__}: {error}): set MOODMATE_MODEL "
                "to a working .gguf file or model directory."
            ) from error
        finally:
            steps.close()
            shutil.rmtree(temporary, ignore_errors=True)
    logger.info("Converted %s into the cache in %.0f s", gguf_path.name, time.perf_counter() - started)
    return target
