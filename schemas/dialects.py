"""Request bodies of the APIs beside OpenAI's chat and completions that today's clients call: OpenAI's
Responses API, Anthropic's Messages API, and the rerank and tokenizer endpoints of vLLM, llama.cpp and
TEI.

As in schemas/openai.py, the fields the gateway depends on are validated strictly and everything else
(tool definitions, vendor extensions) is kept and passed on untouched.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.openai import ModelName

# The ids the gateway gives responses: `resp_` and the request id (`task_...` for async work). Anything
# else cannot name a stored response and is refused before any lookup (it is also a valid KV key).
RESPONSE_ID_PATTERN = r"^resp_[A-Za-z0-9_-]{1,160}$"


class _PassThrough(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- OpenAI Responses API -----------------------------------------------------------------------


class ResponsesRequest(_PassThrough):
    model: ModelName
    # A string (one user message) or a list of items: messages, function calls and their outputs.
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, pattern=RESPONSE_ID_PATTERN)
    store: bool = True  # as OpenAI: responses are kept unless the caller says otherwise
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _function_tools_only(self) -> ResponsesRequest:
        for tool in self.tools or ():
            if tool.get("type") != "function":
                # Hosted tools (web search, file search, code interpreter) run at OpenAI, not here.
                raise ValueError(f"tool type {tool.get('type')!r} is not supported: only function tools")
        return self


# --- Anthropic Messages API ----------------------------------------------------------------------


class AnthropicMessage(_PassThrough):
    role: Literal["user", "assistant"]
    # A string or content blocks: text, image, tool_use, tool_result.
    content: str | list[dict[str, Any]]


class MessagesRequest(_PassThrough):
    model: ModelName
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)  # required by the Messages API
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None


# --- rerank and tokenizer ------------------------------------------------------------------------


class RerankRequest(_PassThrough):
    """The Cohere/Jina shape that vLLM and llama.cpp serve at `/v1/rerank`."""

    model: ModelName
    query: str = Field(min_length=1)
    documents: list[str | dict[str, Any]] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool | None = None


class ScoreRequest(_PassThrough):
    """vLLM's `/v1/score`: `text_1` scored against each of `text_2` (one to one, one to many, or
    pairwise for two lists of the same length)."""

    model: ModelName
    text_1: str | list[str] = Field(min_length=1)
    text_2: str | list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _pairs(self) -> ScoreRequest:
        if isinstance(self.text_1, list) and isinstance(self.text_2, list):
            if len(self.text_1) not in (1, len(self.text_2)):
                raise ValueError("`text_1` must hold one text or as many as `text_2`")
        elif isinstance(self.text_1, list) and len(self.text_1) != 1:
            raise ValueError("with one `text_2`, `text_1` must hold one text")
        return self


class TokenizeRequest(_PassThrough):
    """llama.cpp's `content` or vLLM's `prompt`; the backend's own answer comes back as it is."""

    model: ModelName
    content: str | None = None
    prompt: str | None = None
    add_special: bool | None = None

    @model_validator(mode="after")
    def _has_text(self) -> TokenizeRequest:
        if self.content is None and self.prompt is None:
            raise ValueError("send the text to tokenize as `content` (or `prompt`)")
        return self


class DetokenizeRequest(_PassThrough):
    model: ModelName
    tokens: list[int] = Field(min_length=1)


class StoredResponse(BaseModel):
    """A Responses API answer as kept for `GET /v1/responses/{id}` and `previous_response_id`.

    Each record holds its whole conversation (`context`), so it never depends on an earlier record:
    deleting or expiring one response does not break the responses that continued from it.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    consumer: str  # the owner: nobody else can read, continue or delete it
    created_at: int
    context: list[dict[str, Any]]  # the input items the model saw, earlier turns included
    response: dict[str, Any]  # the response body as the client received it

    def conversation(self) -> list[dict[str, Any]]:
        """The input items of a response that continues this one: its context, then its output."""
        output = self.response.get("output") or []
        return [*self.context, *(item for item in output if isinstance(item, dict) and _replayed(item))]


def _replayed(item: dict[str, Any]) -> bool:
    # Reasoning items are the backend's own business; messages and function calls are the dialogue.
    return item.get("type") in ("message", "function_call")


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Responses `input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """An error as the Messages API answers it (its clients read `error.type`, not the status)."""
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
