"""Backend error answers read for what they mean (workers/backends/backend_errors.py)."""

from __future__ import annotations

import orjson

from workers.backends.backend_errors import backend_error, overflow_message


def _body(error: object) -> bytes:
    return orjson.dumps({"error": error})


def test_llama_cpp_context_overflow_keeps_its_token_counts() -> None:
    error = backend_error(
        400,
        _body(
            {
                "code": 400,
                "message": "request (3002 tokens) exceeds the available context size (2048 tokens)",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 3002,
                "n_ctx": 2048,
            }
        ),
    )
    assert (error.status, error.retryable, error.code, error.overflow) == (
        400,
        False,
        "context_length_exceeded",
        (3002, 2048),
    )


def test_vllm_and_tgi_overflows_are_recognized_by_their_words() -> None:
    vllm = backend_error(
        400,
        _body(
            {
                "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
                "(4990 in the messages, 10 in the completion).",
                "type": "BadRequestError",
                "code": 400,
            }
        ),
    )
    assert vllm.code == "context_length_exceeded" and vllm.overflow == (5000, 4096)
    tgi = backend_error(
        422,
        _body(
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 3000 `inputs` tokens and 16 `max_new_tokens`"
        ),
    )
    assert tgi.code == "context_length_exceeded" and tgi.overflow == (3000, 2048)


def test_other_errors_keep_the_backends_words_and_retry_rules() -> None:
    bad = backend_error(400, _body({"message": "temperature must be below 2"}))
    assert (bad.status, bad.retryable, bad.code, bad.message) == (
        400,
        False,
        None,
        "temperature must be below 2",
    )
    missing = backend_error(
        501, _body({"message": "This server does not support reranking.", "type": "not_supported_error"})
    )
    assert (missing.status, missing.retryable, missing.code) == (501, False, "not_implemented")
    busy = backend_error(503, b"<html>overloaded</html>")
    assert (busy.status, busy.retryable, busy.message) == (502, True, "the backend answered 503")


def test_overflow_is_said_the_way_each_api_says_it() -> None:
    assert overflow_message(3002, 2048, anthropic=False).startswith(
        "This model's maximum context length is 2048"
    )
    assert overflow_message(3002, 2048, anthropic=True) == "prompt is too long: 3002 tokens > 2048 maximum"
