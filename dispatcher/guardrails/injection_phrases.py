"""Whole phrasings of known attacks (mostly English, some German, French, Spanish, Italian and
Portuguese): the first detector, tuned against the original labelled set. The concept rules in
injection.py generalize them to more languages and word orders; these still run on text that holds
a role or delimiter marker (`<|im_start|>`, `[INST]`, `### system:`), which only they know.
"""

from __future__ import annotations

import re

from dispatcher.guardrails.findings import Finding

_PREVIOUS = r"(?:all |any |the |your |my |these |those )*(?:previous|prior|preceding|above|earlier|former|original|initial|system|existing|old)?"
_RULES = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|constraints|context|programming|restrictions|policies|commands)"
_PATTERNS = [
    # "Ignore all previous instructions", "disregard the above", "forget your rules"
    rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|discard|neglect)\s+{_PREVIOUS}\s*{_RULES}",
    r"\b(?:ignore|disregard|forget)\s+(?:everything|all(?: of)?(?: that| this| the above)?|what (?:you were|i) (?:told|said))\b(?:\s+(?:above|before|previously|so far))?",
    # System-prompt exfiltration
    r"\b(?:reveal|show|print|display|repeat|output|leak|disclose|tell me|give me|what (?:is|are|was|were)|write out|spell out)\b[^.?!\n]{0,40}\b(?:your|the)\s+(?:system|initial|original|hidden|secret|full|complete|developer|internal)\s+(?:prompt|instructions?|message|rules|guidelines|configuration)",
    r"\b(?:repeat|print|output)\s+(?:the\s+)?(?:text|words|everything)\s+(?:above|before)\b",
    r"\b(?:output|print|repeat|give me|write out)\s+the\s+first\s+\d+\s+words\b",
    r"\b(?:rules|instructions|guidelines|directions)\s+you\s+(?:were|have been|got)\s+given\b",
    (
        r"\b(?:disable|turn off|deactivate|remove|switch off)\s+(?:your|all|the|any)\s+"
        r"(?:safety|content|moderation|ethical)\s+(?:guidelines|filters?|rules|restrictions|policies|settings|guardrails)"
    ),
    # Persona jailbreaks
    # Persona names alone are ordinary words ("Dan from accounting", "a developer mode toggle"): only
    # being told to become one, or to switch into one, is an attack.
    r"\bdo anything now\b",
    r"\b(?:DAN|STAN|DUDE|jailbreak|unrestricted|evil)\s+mode\s+(?:enabled|activated|on)\b",
    (
        r"\b(?:you are|you're|act as|become|pretend to be|stay|respond as|answer as)\s+(?:now\s+)?(?:an?\s+)?"
        r"(?:DAN|STAN|DUDE|AIM|jailbroken|jailbreak(?:ed)?)\b"
    ),
    (
        r"\b(?:enable|enter|activate|switch (?:in)?to|turn on|you are (?:now )?in|now in|stay in|simulate|unlock)\s+"
        r"(?:the\s+)?(?:DAN|developer|dev|god|evil|unrestricted|jailbreak|DUDE|STAN)\s*mode\b"
    ),
    r"\byou are (?:now |no longer )?(?:an? )?(?:unrestricted|unfiltered|uncensored|jailbroken|free of (?:all )?(?:rules|restrictions))\b",
    r"\b(?:pretend|act|behave|roleplay|role-play|imagine)\b[^.?!\n]{0,60}\b(?:no|without|free of|not bound by|ignor\w+)\s+(?:any\s+)?(?:rules|restrictions|filters|guidelines|ethics|policies|censorship)",
    r"\bfrom now on,? you (?:will|must|are|shall|should)\b[^.?!\n]{0,80}\b(?:ignore|no longer|without|not (?:follow|obey)|unrestricted|anything)",
    r"\bnew (?:system )?instructions?\s*:",
    r"\byour (?:new )?(?:task|instructions?|rules?) (?:is|are) now\b",
    # Role and delimiter injection
    r"<\|(?:im_start|im_end|system|endoftext|start_header_id)\|>",
    r"\[/?INST\]|<<\s*/?SYS\s*>>",
    r"^\s*#{2,}\s*(?:system|instructions?|admin)\s*:?\s*$",
    r"^\s*(?:system|assistant)\s*:\s*(?:you|ignore|new|from now)",
    r"\b(?:end of (?:system )?(?:prompt|instructions)|system override|admin override|sudo mode)\b",
    # Obfuscation asked of the model itself
    r"\b(?:decode|base64[- ]decode|rot13)\b[^.?!\n]{0,40}\b(?:and|then)\s+(?:follow|execute|run|obey|do)\b",
    # German, French, Spanish, Italian, Portuguese
    r"\b(?:ignorier\w*|vergiss|missachte\w*)\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen|vorigen)?\s*(?:anweisungen|instruktionen|regeln|befehle)",
    r"\bignor\w*\s+(?:toutes?\s+)?(?:les|tes|vos)\s+(?:instructions|consignes|règles)(?:\s+(?:précédentes|ci-dessus|antérieures))?",
    r"\b(?:ignora|olvida)\w*\s+(?:todas\s+)?(?:las|tus)\s+(?:instrucciones|reglas|indicaciones)(?:\s+(?:anteriores|previas))?",
    r"\bignora\s+(?:tutte\s+)?(?:le\s+)?istruzioni\s+(?:precedenti|sopra)",
    r"\bignore\s+(?:todas\s+)?as\s+instruções\s+(?:anteriores|acima)",
]
PHRASES = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE | re.MULTILINE)
_MARKERS = ("<|", "[inst", "[/inst", "<<", "##", "system:", "assistant:")


def phrases(text: str, lowered: str) -> list[Finding]:
    """Only where a role or delimiter marker appears: the concept rules cover the rest, and running
    these patterns around trigger words cost 150 µs on a 2,000-character prompt."""
    if not any(marker in lowered for marker in _MARKERS):
        return []
    return [Finding("injection", m.start(), m.end()) for m in PHRASES.finditer(text)]
