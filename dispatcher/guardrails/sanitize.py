"""Output sanitization: what a model may emit that a client should never render or store."""

from __future__ import annotations

import re

# C0/C1 controls except tab and newline (and CR), zero-width and bidirectional overrides (which can
# make text display differently from what it is: "Trojan Source"), lone surrogates.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def sanitize(text: str) -> str:
    return _UNSAFE.sub("", text) if _UNSAFE.search(text) else text
