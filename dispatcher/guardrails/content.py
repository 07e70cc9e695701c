"""Content filter: categories of regular expressions, built in or from the configuration.

The built-in categories are deliberately narrow (requests for operational harm, not topics): a
gateway in front of an enterprise's own models should not refuse a security team asking what
ransomware is. Operators add their own categories (project code names, competitor names, internal
classification markers) in `guardrails.content_categories`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from dispatcher.guardrails.findings import Finding

_MAKE = r"(?:how (?:do i|to|can i|would i)|help me|steps to|instructions (?:for|to)|guide to|teach me to)"
BUILTIN: dict[str, list[str]] = {
    "weapons": [
        rf"{_MAKE}\s+(?:build|make|assemble|manufacture|synthesi[sz]e|create)\s+(?:an?\s+)?(?:pipe bomb|bomb|explosive device|ied|nerve agent|sarin|ricin|bioweapon|chemical weapon|dirty bomb|ghost gun|silencer)",
    ],
    "violence": [
        (
            rf"{_MAKE}\s+(?:kill|murder|poison|strangle|stab)\s+(?:someone|somebody|a person|people|a human|him|her"
            r"|them|(?:my|a|the) (?:wife|husband|partner|boss|neighbou?r|mother|father|sister|brother|child|kid"
            r"|coworker|colleague|teacher|ex|friend|roommate))\b"
        ),
    ],
    "self_harm": [
        r"\b(?:i want to|i'm going to|i am going to|how (?:can|do) i|best way to)\s+(?:kill myself|end my life|commit suicide|hurt myself)\b",
    ],
    "malware": [
        rf"{_MAKE}\s+(?:write|create|build|code|develop)\s+(?:an?\s+)?(?:working\s+)?(?:ransomware|keylogger|credential stealer|botnet|rootkit|computer virus|worm that spreads)",
    ],
}


# A built-in category's patterns can only match if the prompt has one of its words.
_BUILTIN_WORDS: dict[str, frozenset[str]] = {
    "weapons": frozenset(
        [
            "bomb",
            "explosive",
            "ied",
            "nerve",
            "sarin",
            "ricin",
            "bioweapon",
            "chemical",
            "dirty",
            "ghost",
            "silencer",
        ]
    ),
    "violence": frozenset(["kill", "murder", "poison", "strangle", "stab"]),
    "self_harm": frozenset(["kill", "end", "commit", "hurt"]),
    "malware": frozenset(["ransomware", "keylogger", "credential", "botnet", "rootkit", "virus", "worm"]),
}
_WORDS = re.compile(r"[^\W\d_]+")


class ContentFilter:
    def __init__(self, categories: Mapping[str, Sequence[str]] | None = None) -> None:
        chosen = BUILTIN if categories is None else categories
        self._categories = [
            (
                name,
                re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE),
                _BUILTIN_WORDS.get(name) if categories is None else None,
            )
            for name, patterns in chosen.items()
            if patterns
        ]

    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        words: set[str] | None = None
        for name, pattern, needs in self._categories:
            if needs is not None:
                if words is None:
                    words = set(_WORDS.findall(text.lower()))
                if words.isdisjoint(needs):
                    continue
            found.extend(Finding(f"content:{name}", m.start(), m.end()) for m in pattern.finditer(text))
        return found
