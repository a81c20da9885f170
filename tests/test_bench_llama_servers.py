"""How the benchmarks and tests start llama.cpp: weight repacking off only where it crashes (AMX CPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import llama_servers
from bench.llama_cpp_server import cpu_has_amx

AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
NO_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni avx512_bf16\nbugs\t\t: amx_fake\n"


def test_amx_is_read_from_the_flags_line_only() -> None:
    assert cpu_has_amx(AMX)
    assert not cpu_has_amx(NO_AMX)
    assert not cpu_has_amx("")


@pytest.mark.parametrize(("has_amx", "expected"), [(True, True), (False, False)])
def test_llama_server_turns_repacking_off_only_on_amx(
    has_amx: bool, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("", encoding="utf-8")
    monkeypatch.setenv("LLAMA_SERVER", str(binary))
    monkeypatch.setattr(llama_servers, "cpu_has_amx", lambda: has_amx)
    server = llama_servers.LlamaServer(kind="cpp", model=tmp_path / "m.gguf", port=9, parallel=4)
    command = server.command()
    assert ("--no-repack" in command) is expected
    assert command[command.index("--parallel") + 1] == "4"
