"""Backend error bodies read for what they mean, in OpenAI's codes: a client must be able to tell a
prompt that is too long from any other bad request, through the gateway as when calling the server.

Seen in the wild:
- llama.cpp: 400 `{"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 3002,
  "n_ctx": 2048, ...}}`;
- vLLM (and OpenAI): 400 "This model's maximum context length is 2048 tokens. However, you
  requested 3002 tokens ...", sometimes with `code: "context_length_exceeded"`;
- TGI: 422 "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: ...".
"""

from __future__ import annotations

import re
from typing import Any

import orjson


class BackendError(Exception):
    """The backend could not answer.

    `retryable` is true when the same request may succeed later or elsewhere (connection refused,
    5xx, 429); false when the request itself is at fault (4xx): retrying would fail the same way.
    """

    def __init__(
        self,
        message: str,
        status: int = 502,
        retryable: bool = True,
        code: str | None = None,
        overflow: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.code = code  # the OpenAI error code the client should see, when the backend said one
        self.overflow = overflow  # (prompt tokens, context size) of a prompt the model cannot hold


CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
_VLLM = re.compile(
    r"maximum context length is (\d+) tokens.*?(?:requested|resulted in|has) (\d+) tokens", re.DOTALL
)
_TGI = re.compile(r"must be <= (\d+)\. Given: (\d+) `inputs` tokens", re.DOTALL)


def backend_error(status: int, content: bytes) -> BackendError:
    """The error a backend's HTTP error answer stands for."""
    try:
        body: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    detail = error_message(body)
    overflow = _overflow(error, detail)
    if overflow is not None or (isinstance(error, dict) and error.get("code") == CONTEXT_LENGTH_EXCEEDED):
        return BackendError(
            detail or "the prompt is longer than the model's context",
            400,
            False,
            CONTEXT_LENGTH_EXCEEDED,
            overflow,
        )
    if status == 501:  # the server lacks the feature (llama.cpp's rerank without --reranking)
        return BackendError(
            detail or "the backend does not serve this endpoint", 501, False, "not_implemented"
        )
    retryable = status >= 500 or status == 429
    text = detail or f"the backend answered {status}"
    # A 4xx is the request's fault and is reported as such; anything else is the backend's.
    return BackendError(text, 400 if 400 <= status < 500 and status != 429 else 502, retryable)


def overflow_message(prompt_tokens: int, context: int, anthropic: bool) -> str:
    """How each API says it: OpenAI's sentence (which client libraries match to raise their context
    window error) or Anthropic's."""
    if anthropic:
        return f"prompt is too long: {prompt_tokens} tokens > {context} maximum"
    return (
        f"This model's maximum context length is {context} tokens. However, your request has "
        f"{prompt_tokens} input tokens. Please reduce the length of the input."
    )


def _overflow(error: Any, detail: str) -> tuple[int, int] | None:
    if isinstance(error, dict):
        prompt, context = error.get("n_prompt_tokens"), error.get("n_ctx")
        if isinstance(prompt, int) and isinstance(context, int):
            return prompt, context
    for pattern in (_VLLM, _TGI):
        found = pattern.search(detail)
        if found is not None:
            return int(found.group(2)), int(found.group(1))
    return None


def error_message(body: object) -> str:
    """The human part of an error body in any of the shapes above (at most 500 characters)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:500]
        if isinstance(error, str):
            return error[:500]
        if isinstance(body.get("message"), str):  # TGI: {"error": "...", "error_type": ...} or message
            return str(body["message"])[:500]
    return ""
