"""Text as detectors should see it, and the way back to the original.

Detectors run on a normalized copy: NFKC (full-width digits and letters, mathematical alphanumerics,
ligatures), other scripts' decimal digits as ASCII, invisible characters removed (zero-width,
bidirectional controls, soft hyphens, variation selectors, tag characters; Arabic vowel marks),
unusual spaces as a
space, and confusable Cyrillic or Greek letters folded to Latin inside words that also hold Latin
letters ("pаypal" with a Cyrillic а). Pure Cyrillic or Greek words are left alone: folding them
would turn Russian into nonsense for the Russian detectors.

`Normalized.original(start, end)` maps a span found in the normalized text back to the exact span of
the original that produced it, so masking replaces what was there, invisible characters included.

Cost: ASCII text (most prompts) is returned as it is; otherwise one `str.translate` and
`unicodedata.is_normalized` at C speed, and per-character work only for the characters NFKC expands
or for removed characters.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from functools import lru_cache

# Removed: zero-width and joiners, bidirectional controls and isolates, soft hyphen, word joiner and
# invisible operators, variation selectors, the BOM, Mongolian vowel separator, Hangul fillers, tags.
# Also Arabic short-vowel marks and tatweel: optional in writing ("انسَ" is "انس"), so an attack
# need not spell them as the lexicon does; no identifier contains one.
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f\u0640\u064b-\u065f\u0670"
)
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]")
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
# Decimal digits of other scripts (NFKC leaves them): Arabic-Indic, Persian, Devanagari, Bengali, Thai.
_DIGIT_BLOCKS = (0x0660, 0x06F0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0E50, 0x1040, 0xFF10)
# Letters that look like Latin ones (Unicode's confusables, the common subset).
_HOMOGLYPHS = dict(
    zip(
        "аеорсхуіјѕԁԛԝһӏАВЕКМНОРСТХУІЈЅαορνικυτΑΒΕΖΗΙΚΜΝΟΡΤΥΧɑ",
        "aeopcxyijsdqwhlABEKMHOPCTXYIJSaopvikutABEZHIKMNOPTYXa",
        strict=True,
    )
)
_CONFUSABLE_RE = re.compile("[" + "".join(_HOMOGLYPHS) + "]")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def _table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for match in re.finditer(r"(.)-(.)|(.)", _INVISIBLE):
        first, last = (match.group(1), match.group(2)) if match.group(1) else (match.group(3),) * 2
        for code in range(ord(first), ord(last) + 1):
            table[code] = None
    for ch in _SPACES:
        table[ord(ch)] = " "
    for block in _DIGIT_BLOCKS:
        for d in range(10):
            table[block + d] = str(d)
    # Full-width ASCII, mathematical alphanumerics, enclosed and circled letters and digits: NFKC
    # makes each one character, so they are 1:1 replacements and keep every offset.
    for start, end in ((0xFF01, 0xFF5F), (0x1D400, 0x1D800), (0x2460, 0x2500), (0x1F130, 0x1F18A)):
        for code in range(start, end):
            folded = unicodedata.normalize("NFKC", chr(code))
            if len(folded) == 1 and folded != chr(code):
                table[code] = folded
    return table


_TABLE = _table()


class Normalized:
    """A normalized text and the map back to the original.

    The map is the list of changes, in order: at normalized index `n` the original character at `o`
    became `length` characters (0: removed, 2 or more: expanded; 1:1 replacements keep every offset
    and need no entry). Between changes the two texts run in step.
    """

    __slots__ = ("_lengths", "_norm", "_orig", "text")

    def __init__(self, text: str, changes: list[tuple[int, int, int]] | None = None) -> None:
        self.text = text
        self._norm = [n for n, _, _ in changes or ()]
        self._orig = [o for _, o, _ in changes or ()]
        self._lengths = [length for _, _, length in changes or ()]

    @property
    def identity(self) -> bool:
        return not self._norm

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that produced `text[start:end]`."""
        if not self._norm:
            return start, end
        return self._at(start, False), self._at(end - 1, True) if end > start else self._at(start, False)

    def _at(self, i: int, after: bool) -> int:
        """Where normalized character `i` starts in the original (or ends, if `after`)."""
        k = bisect_right(self._norm, i) - 1
        if k < 0:
            return i + after
        n, o, length = self._norm[k], self._orig[k], self._lengths[k]
        if i < n + length:
            return o + after  # inside an expansion: its whole original character
        return o + 1 + (i - n - length) + after


@lru_cache(maxsize=4096)
def _nfkc(ch: str) -> str:
    return unicodedata.normalize("NFKC", ch)


# The PII, injection and content detectors each normalize the same prompt one after the other: the
# last few results are kept (a Normalized is never changed after it is built), which halves the cost
# on non-ASCII text. Few, because each holds its text alive (a large prompt twice).
@lru_cache(maxsize=4)
def normalize(text: str) -> Normalized:
    if text.isascii():
        return Normalized(text)
    folded = text.translate(_TABLE)
    if len(folded) == len(text) and unicodedata.is_normalized("NFKC", folded):
        return Normalized(_fold_homoglyphs(folded))  # 1:1 replacements only: offsets unchanged
    return _slow(text)


def _slow(text: str) -> Normalized:
    """Removals and expansions: build the text and its changes character by character, but only
    over the non-ASCII runs."""
    out: list[str] = []
    changes: list[tuple[int, int, int]] = []
    at = 0  # original index copied up to
    n = 0  # normalized length so far
    for run in _NON_ASCII_RUN.finditer(text):
        for i in range(run.start(), run.end()):
            ch = text[i]
            mapped = _TABLE.get(ord(ch), ch)
            new = _nfkc(mapped) if mapped is not None else ""
            if new == ch:
                continue
            out.append(text[at:i])
            n += i - at
            out.append(new)
            if len(new) != 1:
                changes.append((n, i, len(new)))
            n += len(new)
            at = i + 1
    out.append(text[at:])
    return Normalized(_fold_homoglyphs("".join(out)), changes)


def _fold_homoglyphs(text: str) -> str:
    """Confusable letters folded to Latin in words that mix them with Latin letters (1:1)."""
    first = _CONFUSABLE_RE.search(text)
    if first is None:
        return text
    chars: list[str] | None = None
    done = 0
    for m in _CONFUSABLE_RE.finditer(text, first.start()):
        if m.start() < done:
            continue
        start, end = m.start(), m.end()
        while start > 0 and text[start - 1].isalpha():
            start -= 1
        while end < len(text) and text[end].isalpha():
            end += 1
        done = end
        word = text[start:end]
        if any("a" <= c.lower() <= "z" for c in word):
            if chars is None:
                chars = list(text)
            chars[start:end] = [_HOMOGLYPHS.get(c, c) for c in word]
    return "".join(chars) if chars is not None else text
