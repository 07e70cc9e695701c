"""The injection lexicon compiled for matching: every term of injection_lexicon.py,
injection_lexicon_extra.py, injection_lexicon_round5.py and injection_lexicon_round6.py, accent-folded, with typoglycemia variants of the key English words, as
one trie-shaped regular expression for spaced scripts and one per unspaced script, and the concepts
each matched term stands for.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import cache
from typing import NamedTuple

from dispatcher.guardrails.injection_lexicon import LEXICON
from dispatcher.guardrails.injection_lexicon_extra import EXTRA
from dispatcher.guardrails.injection_lexicon_round5 import ROUND5
from dispatcher.guardrails.injection_lexicon_round6 import ROUND6
from dispatcher.guardrails.normalize import normalize

# Scripts whose words take no space before them or have particles and prefixes glued on (Arabic,
# Hindi, Japanese, Chinese, Korean): their terms match anywhere, not only at a word start.
UNSPACED = re.compile(r"[\u0600-\u06ff\u0900-\u097f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# Their terms, one pattern per script, run only on text holding that script: a trie's top level is
# one branch per first character, tried in turn at every position, so Chinese text need not try the
# Korean, Arabic and Hindi branches (0.22 ms on 2,000 Chinese characters with all of them).
_SCRIPTS = tuple(
    re.compile(ranges)
    for ranges in (
        r"[\u0600-\u06ff]",
        r"[\u0900-\u097f]",
        r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]",
        r"[\uac00-\ud7af]",
    )
)


def _trie_pattern(terms: Iterable[str]) -> str:
    """One regular expression for many terms: shared prefixes are matched once."""
    root: dict[str, dict] = {}  # type: ignore[type-arg]
    for term in terms:
        node = root
        for ch in term:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:  # type: ignore[type-arg]
        branches = []
        # Longer terms first: "$" (a word ends here) after every letter that could continue one.
        for ch in sorted((k for k in node if k), key=lambda k: (k == "$", k)):
            piece = r"\s+" if ch == " " else re.escape(ch)
            if ch == "$":
                # A whole word: no letter of the same kind follows ("вы$" is not "выше"), but another
                # script may ("DANモード" still names DAN).
                piece = r"(?![a-z0-9\u00c0-\u024f\u0400-\u04ff\u0600-\u06ff\u0900-\u097f])"
            branches.append(piece + build(node[ch]))
        if "" in node:
            branches.append("")  # the term may end here; longer ones are tried first
        if len(branches) == 1:
            return branches[0]
        return "(?:" + "|".join(branches) + ")"

    return build(root)


def _accent_folds() -> dict[int, str]:
    """Latin and Cyrillic letters with diacritics as their base letter (1:1, offsets kept): attacks
    are typed with and without accents ("instrucoes", "zeka" for "zekâ", "ё" as "е"), so text and
    terms are both matched folded. Hangul and other scripts that decompose are left alone."""
    table: dict[int, str] = {}
    for code in (*range(0xC0, 0x250), *range(0x400, 0x500)):
        parts = unicodedata.normalize("NFD", chr(code))
        if len(parts) > 1 and parts[0].isalpha() and all(unicodedata.combining(c) for c in parts[1:]):
            table[code] = parts[0]
    return table


_FOLD = _accent_folds()


_FOLDABLE = re.compile(r"[\u00c0-\u024f\u0400-\u04ff]+")


def fold(lowered: str) -> str:
    # Only the runs that hold such letters: translate() over a whole Chinese text cost 0.17 ms.
    if lowered.isascii() or not _FOLDABLE.search(lowered):
        return lowered
    return _FOLDABLE.sub(lambda m: m.group().translate(_FOLD), lowered)


# Typoglycemia ("ignroe all prevoius systme instructions", garak's probe): the key English words of
# an override or exfiltration with two neighbouring inner letters swapped are terms too. Only single
# words of six letters or more, so the variants are not words of their own.
_TYPO_CONCEPTS = frozenset(["IGNORE", "PRIOR", "RULES", "REVEAL", "DISABLE", "LIMITS", "SYSTEM_PROMPT"])
_TYPO_WORD = re.compile(r"[a-z]{6,}\$?")


def _swaps(term: str) -> list[str]:
    end = "$" if term.endswith("$") else ""
    word = term.removesuffix("$")
    return [
        word[:i] + word[i + 1] + word[i] + word[i + 2 :] + end
        for i in range(1, len(word) - 2)
        if word[i] != word[i + 1]
    ]


class Terms(NamedTuple):
    words: re.Pattern[str]  # the spaced scripts' terms, matched at word starts
    glued: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...]  # (script, its terms) per unspaced script
    concepts: dict[str, frozenset[str]]  # each matched term's concepts


@cache
def terms() -> Terms:
    """The lexicon compiled, once per process, when first asked for: compiling costs 0.13-0.5 s of CPU
    (more on a loaded machine), which workers and the dispatcher, importing the guardrails for other
    checks, never need; the ingress asks for it at start-up (ingress/app.py)."""
    concepts: dict[str, set[str]] = {}
    typos: dict[str, set[str]] = {}
    for concept, listed in [*LEXICON.items(), *EXTRA.items(), *ROUND5.items(), *ROUND6.items()]:
        for term in listed:
            key = fold(normalize(term.lower()).text)
            concepts.setdefault(key, set()).add(concept)
            if concept in _TYPO_CONCEPTS and _TYPO_WORD.fullmatch(key):
                for variant in _swaps(key):
                    typos.setdefault(variant, set()).add(concept)
    for variant, names in typos.items():
        if variant not in concepts and variant.removesuffix("$") not in concepts:
            concepts[variant] = names
    bounded = [t for t in concepts if not UNSPACED.search(t)]
    unbounded = [t for t in concepts if UNSPACED.search(t)]
    # Matched against lower-cased text: IGNORECASE made the pass 2.5 times slower.
    words = re.compile(r"(?<![^\W_])" + _trie_pattern(bounded))
    glued = []
    for script in _SCRIPTS:
        script_terms = [t for t in unbounded if (m := UNSPACED.search(t)) and script.match(m.group())]
        glued.append((script, re.compile(_trie_pattern(script_terms))))
    lookup: dict[str, set[str]] = {}
    for key, names in concepts.items():
        lookup.setdefault(key.replace("$", ""), set()).update(names)
    # The pass finds the longest term at a place, so a stem inside it must lend its concepts:
    # "guidelines" (LIMITS) also begins with the stem "guideline" (RULES).
    stems = {k: v for k, v in concepts.items() if not k.endswith("$")}
    for key in list(lookup):
        for end in range(1, len(key)):
            lookup[key].update(stems.get(key[:end], ()))
    return Terms(words, tuple(glued), {k: frozenset(v) for k, v in lookup.items()})
