"""Masking a streamed answer: hold back just enough that an entity split across chunks is still
caught whole, and emit the rest at once.

The cut between what is emitted and what is held is always at a break (whitespace, or a non-ASCII
character that is not a digit: no entity contains one, so scripts written without spaces still
stream), at least `hold` characters before the end of what has arrived, and never inside a detected
entity. An entity without inner whitespace (e-mail, key, token, IBAN without spaces) is therefore
never split: the word it sits in is held whole. Entities with inner whitespace (cards, IBANs and phone
numbers in groups) are shorter than `hold`, so by the time the cut passes their start they have fully
arrived and been detected. An unterminated PEM private key is held until its END line (up to
`max_hold`). Detection runs only when there is something to emit: a long word being held costs a
scan for a break, not a detection, per chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dispatcher.guardrails.findings import Finding, mask, non_overlapping

_CONTEXT = 64
_BATCH = 32
# Greedy: the match ends just after the last break before `endpos`.
_LAST_BREAK = re.compile(r"(?s).*(?:\s|[^\x00-\x7f\d])")


class StreamMasker:
    def __init__(
        self, detect: Callable[[str], list[Finding]], hold: int = 128, max_hold: int = 16384
    ) -> None:
        self._detect = detect
        self._hold = hold
        self._max_hold = max_hold
        self._pending = ""
        self._unbroken = 0  # `_pending[:_unbroken]` is known to hold no break
        self._context = ""  # the raw tail of what was already sent: detectors that look back need it
        self.findings: list[Finding] = []  # what was masked, for the audit row and metrics

    def feed(self, chunk: str) -> str:
        """Text that is safe to send now, masked."""
        self._pending += chunk
        # Detect once per `_BATCH` new characters rather than per token: a few characters of extra
        # latency, an eighth of the work.
        if len(self._pending) <= self._hold + _BATCH:
            return ""
        return self._emit(final=False)

    def flush(self) -> str:
        """The rest, masked, at the end of the stream."""
        return self._emit(final=True) if self._pending else ""

    def _emit(self, final: bool) -> str:
        text = self._pending
        cut = len(text)
        if not final:
            cut = self._last_break_before(text, len(text) - self._hold)
            if cut == 0:
                if len(text) <= self._max_hold:
                    return ""  # nothing could be sent: no need to detect yet
                cut = len(text) - self._hold  # one enormous word: give up holding it whole
        context = self._context
        shift = len(context)
        found = non_overlapping(
            [
                Finding(f.kind, f.start - shift, f.end - shift)
                for f in self._detect(context + text)
                if f.start >= shift
            ]
        )
        if not final:
            cut = self._avoid_entities(text, found, cut)
            if cut <= 0:
                return ""
        emitted = [f for f in found if f.end <= cut]
        self.findings.extend(emitted)
        self._pending = text[cut:]
        self._unbroken = 0
        self._context = (context + text[:cut])[-_CONTEXT:]
        return mask(text[:cut], emitted)

    def _last_break_before(self, text: str, limit: int) -> int:
        """Index just after the last break before `limit` (0 if none)."""
        if limit <= 0:
            return 0
        m = _LAST_BREAK.match(text, self._unbroken, limit)
        if m is None:
            self._unbroken = max(self._unbroken, limit)
            return 0
        return m.end()

    def _avoid_entities(self, text: str, found: list[Finding], cut: int) -> int:
        for finding in found:
            if finding.start < cut < finding.end:
                cut = finding.start
        begin = text.rfind("-----BEGIN", 0, cut)
        if begin != -1 and "-----END" not in text[begin:] and len(text) - begin < self._max_hold:
            cut = min(cut, begin)
        return cut
