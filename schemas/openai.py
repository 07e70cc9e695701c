"""The OpenAI API surface Modelbus serves: request and response bodies, stream chunks, errors.

Requests are validated strictly on the fields the gateway depends on (model, messages, limits) and
permissively everywhere else: unknown fields such as `tools`, `response_format` or vendor extensions
are kept (`extra="allow"`) and passed to the backend untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MODEL_NAME_LENGTH = 256


class _PassThrough(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)]


# --- chat completions -------------------------------------------------------------------------


class FunctionCall(_PassThrough):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_PassThrough):
    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None


class ChatMessage(_PassThrough):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # A string, a list of content parts (text, image_url, ...) or null for tool-call turns.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_PassThrough):
    include_usage: bool | None = None


class _GenerationRequest(_PassThrough):
    """Fields chat and legacy completions share."""

    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stop: str | list[str] | None = None
    user: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class Usage(_PassThrough):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatChoice(_PassThrough):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(_PassThrough):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ChatDelta(_PassThrough):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(_PassThrough):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_PassThrough):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- legacy completions -------------------------------------------------------------------------


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(default=None, ge=1, le=20)  # sequences generated, of which n return
    suffix: str | None = None


class CompletionChoice(_PassThrough):
    index: int = 0
    text: str
    finish_reason: str | None = None


class Completion(_PassThrough):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- embeddings --------------------------------------------------------------------------------


class EmbeddingRequest(_PassThrough):
    model: ModelName
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: object) -> object:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return value


class Embedding(_PassThrough):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(_PassThrough):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage | None = None


# --- models and errors -------------------------------------------------------------------------


class Model(_Strict):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "modelbus"


class ModelList(_Strict):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(_Strict):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Strict):
    error: ErrorDetail


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> ErrorResponse:
    """The body OpenAI answers with for an error: what every refusal looks like, sync or batch."""
    return ErrorResponse(error=ErrorDetail(message=message, type=error_type(status), param=param, code=code))


InferenceRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
