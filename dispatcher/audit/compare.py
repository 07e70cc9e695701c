"""Reading audit records as a person would: the prompt and the answer as text, and how much an
answer changed between two versions of a model (for `audit compare`)."""

from __future__ import annotations

import difflib
import re
from typing import Any

_WORDS = re.compile(r"\w+|[^\w\s]")


def prompt_of(record_input: Any) -> str:
    """The last user turn (chat), the prompt (completions) or the input (embeddings), as text."""
    if not isinstance(record_input, dict):
        return ""
    messages = record_input.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    for name in ("prompt", "input"):
        if name in record_input:
            return _text(record_input[name])
    return ""


def answer_of(output: Any) -> str:
    """The answer's text: a plain body's first choice, or a stream's joined text."""
    if not isinstance(output, dict):
        return ""
    if isinstance(output.get("text"), str):
        return str(output["text"])
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            return _text(message.get("content"))
        return _text(choice.get("text"))
    if "embeddings" in output:
        return f"[{output.get('embeddings')} embeddings of {output.get('dimensions')} dimensions]"
    return ""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in value
        ).strip()
    return "" if value is None else str(value)


def text_similarity(one: str, other: str) -> float:
    """1.0 for the same words in the same order, 0.0 for nothing in common (difflib over words)."""
    if one == other:
        return 1.0
    return difflib.SequenceMatcher(None, _WORDS.findall(one), _WORDS.findall(other), autojunk=False).ratio()


def shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
