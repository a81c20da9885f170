"""Start llama.cpp's OpenAI-compatible servers on loopback with the bundled model, for tests and benchmarks.

Two servers, both from the ``llama-cpp-python`` package on PyPI (the ``server`` extra):

* ``python``: ``python -m llama_cpp.server`` (through ``bench/llama_cpp_server.py``, which turns off the
  weight repacking that crashes on AMX CPUs), which answers one request at a time;
* ``cpp``: llama.cpp's own ``llama-server`` with ``--parallel`` slots and continuous batching,
  built once from the llama.cpp sources inside that package's sdist (``build_llama_server``), run
  with ``--no-repack`` on AMX CPUs for the same crash.

The bundled GGUF is joined once into ``<cache dir>/gguf-for-servers/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: ``bench`` is found from the checkout
    sys.path.insert(0, str(ROOT))

from bench.llama_cpp_server import cpu_has_amx  # noqa: E402
from bot.model.bundled import QWEN, join_parts  # noqa: E402
from bot.settings import default_cache_dir  # noqa: E402


def bundled_gguf(cache_dir: Path | None = None) -> Path:
    """The bundled model as one GGUF file (joined and checked on first use)."""
    target = (cache_dir or default_cache_dir()) / "gguf-for-servers" / QWEN.gguf_name
    if not (target.is_file() and target.stat().st_size == QWEN.size):
        join_parts(QWEN, target, progress=False)
    return target


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp.server`` can be imported (the ``server`` extra is installed)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "uvicorn", "fastapi"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def llama_server_binary(cache_dir: Path | None = None) -> Path | None:
    """A built ``llama-server``: ``$LLAMA_SERVER``, one on PATH, or the one ``build_llama_server`` made."""
    named = os.environ.get("LLAMA_SERVER")
    if named and Path(named).is_file():
        return Path(named)
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    built = (cache_dir or default_cache_dir()) / "llama-server" / "llama-server"
    return built if built.is_file() else None


def build_llama_server(cache_dir: Path | None = None, *, jobs: int = 2) -> Path:
    """Build ``llama-server`` from the sources in the installed llama-cpp-python's sdist (minutes)."""
    from importlib.metadata import version

    target_dir = (cache_dir or default_cache_dir()) / "llama-server"
    target = target_dir / "llama-server"
    if target.is_file():
        return target
    release = version("llama-cpp-python")
    with tempfile.TemporaryDirectory(prefix="moodmate-llama-") as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={release}", "-d", scratch],
            check=True,
        )  # fmt: skip
        [archive] = Path(scratch).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(archive) as sdist:
            sdist.extractall(scratch, filter="data")
        [source] = Path(scratch).glob("llama_cpp_python-*/vendor/llama.cpp")
        build = source / "build"
        options = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
                   "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                   "-DBUILD_SHARED_LIBS=OFF"]  # fmt: skip
        subprocess.run(["cmake", "-S", str(source), "-B", str(build), *options], check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"], check=True)
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", target)
    return target


@dataclass
class LlamaServer:
    """One llama.cpp server process on ``127.0.0.1:port``; ``start``/``stop`` may be repeated."""

    kind: str = "python"  # "python" (llama_cpp.server) or "cpp" (llama-server)
    model: Path = field(default_factory=bundled_gguf)
    port: int = field(default_factory=free_port)
    parallel: int = 1
    context: int = 2048  # per slot
    threads: int = 0
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        threads = str(self.threads or os.cpu_count() or 1)
        if self.kind == "python":
            launcher = str(Path(__file__).with_name("llama_cpp_server.py"))
            return [sys.executable, launcher, "--model", str(self.model), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", str(self.context), "--n_threads", threads,
                    "--n_threads_batch", threads]  # fmt: skip
        binary = llama_server_binary()
        if binary is None:
            raise FileNotFoundError("no llama-server: run bench/llama_servers.py --build first")
        return [str(binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "--parallel", str(self.parallel), "--ctx-size", str(self.context * self.parallel),
                "--threads", threads, "--threads-batch", threads, "--no-webui",
                *(["--no-repack"] if cpu_has_amx() else [])]  # fmt: skip

    def start(self, *, timeout: float = 180.0) -> LlamaServer:
        """Start the process and wait until it answers (llama-server: ``/health``, which says 503 while
        the model loads; llama_cpp.server: ``/v1/models``, served once the model is loaded)."""
        ready = f"http://127.0.0.1:{self.port}/health" if self.kind == "cpp" else f"{self.base_url}/models"
        sink = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.kind} llama.cpp server exited with {self.process.returncode}")
            try:
                if httpx.get(ready, timeout=2.0, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the {self.kind} llama.cpp server did not come up in {timeout:.0f} s")

    def stop(self) -> None:
        """Kill the process (abruptly, as a crash would) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", action="store_true", help="build llama-server from the sdist's sources")
    arguments = parser.parse_args()
    print(bundled_gguf())
    if arguments.build:
        print(build_llama_server())
