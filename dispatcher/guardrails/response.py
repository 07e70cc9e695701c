"""Output guardrails applied where every answer passes: PII masking and sanitization of responses,
whole or streamed, before they leave the worker.

A streamed answer gets one StreamMasker per choice; text is held back only as long as a split entity
could still be completing (see dispatcher/guardrails/stream.py), and released with the choice's
finishing chunk, or in one extra chunk if the backend ends without one.
"""

from __future__ import annotations

from typing import Any

from dispatcher.guardrails.policies import OutputGuard, OutputPolicy, output_guard
from dispatcher.guardrails.sanitize import sanitize
from dispatcher.guardrails.stream import StreamMasker
from schemas.envelope import Endpoint, OutputGuardrails
from schemas.policy import DEFAULT_PHONE_REGIONS

Json = dict[str, Any]


class ResponseGuard:
    def __init__(self, spec: OutputGuardrails, endpoint: Endpoint) -> None:
        regions = tuple(spec.phone_regions) if spec.phone_regions else DEFAULT_PHONE_REGIONS
        policy = OutputPolicy(spec.pii, frozenset(spec.pii_kinds), spec.sanitize, regions)
        self._guard: OutputGuard = output_guard(policy)
        self._sanitize = spec.sanitize
        self._key = "text" if endpoint is Endpoint.COMPLETIONS else "content"
        self._chat = endpoint is Endpoint.CHAT
        self._maskers: dict[int, StreamMasker | None] = {}
        self._last: Json | None = None
        self.events: list[str] = []

    def body(self, body: Json) -> None:
        """Mask a whole response in place."""
        for choice in body.get("choices") or ():
            holder = choice.get("message") if self._chat else choice
            text = holder.get(self._key) if isinstance(holder, dict) else None
            if not isinstance(text, str):
                continue
            masked, found = self._guard.apply(text)
            self._record(found)
            if found and self._guard.policy.pii == "block":
                holder[self._key] = ""
                choice["finish_reason"] = "content_filter"
            else:
                holder[self._key] = masked

    def chunk(self, chunk: Json) -> None:
        """Mask one stream chunk in place (it may come out with less text, held for the next)."""
        self._last = chunk
        for choice in chunk.get("choices") or ():
            holder = choice.get("delta") if self._chat else choice
            if not isinstance(holder, dict):
                continue
            index = choice.get("index", 0)
            masker = self._masker(index)
            text = holder.get(self._key)
            if isinstance(text, str):
                if self._sanitize:
                    text = sanitize(text)
                holder[self._key] = masker.feed(text) if masker is not None else text
            if choice.get("finish_reason") is not None and masker is not None:
                holder[self._key] = (holder.get(self._key) or "") + self._drain(index)

    def finish(self) -> Json | None:
        """A last chunk with text still held, if the stream ended without finishing its choices."""
        if self._last is None:
            return None
        choices = []
        for index in list(self._maskers):
            rest = self._drain(index)
            if rest:
                delta = {self._key: rest}
                choices.append({"index": index, "delta": delta} if self._chat else {"index": index, **delta})
        if not choices:
            return None
        return {k: v for k, v in self._last.items() if k not in ("choices", "usage")} | {"choices": choices}

    def _masker(self, index: int) -> StreamMasker | None:
        if index not in self._maskers:
            self._maskers[index] = self._guard.stream()
        return self._maskers[index]

    def _drain(self, index: int) -> str:
        masker = self._maskers.get(index)
        if masker is None:
            return ""
        rest = masker.flush()
        self._record(masker.findings)
        masker.findings = []
        return rest

    def _record(self, found: list[Any]) -> None:
        action = self._guard.policy.pii
        self.events.extend(f"output.pii.{f.kind}:{action}" for f in found)
