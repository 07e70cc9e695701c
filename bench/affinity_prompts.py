"""The prompts of bench/affinity.py: eight long, distinct system prompts and short user turns.

Seeded, so every run (and both modes of one run) sends the same text; long enough (~1,560 tokens
with Gemma 3's tokenizer) that a prefix-cache miss costs a visible prefill.
"""

from __future__ import annotations

import random

PROMPTS = 8
_TOPICS = [
    "warehouse returns",
    "satellite ground stations",
    "hospital pharmacy",
    "municipal water billing",
    "airline crew rostering",
    "semiconductor fab safety",
    "university admissions",
    "insurance claims triage",
]
_WORDS = [
    "policy",
    "customer",
    "request",
    "record",
    "approval",
    "deadline",
    "exception",
    "escalation",
    "audit",
    "invoice",
    "shipment",
    "schedule",
    "incident",
    "report",
    "review",
    "threshold",
    "priority",
    "contract",
    "service",
    "ticket",
    "account",
    "balance",
    "transfer",
    "inventory",
    "vendor",
    "payment",
    "refund",
    "warranty",
    "document",
    "verification",
    "compliance",
    "access",
    "shift",
    "supervisor",
    "schedule",
    "training",
    "certificate",
    "equipment",
    "maintenance",
    "calibration",
    "sample",
    "batch",
]
TURNS = [
    "What should I do first?",
    "Summarize the rule on deadlines.",
    "Who approves an exception?",
    "Is a second review needed?",
    "How long do we keep records?",
    "What if the vendor is late?",
    "Give me the escalation path.",
    "Can this wait until Monday?",
    "Which form do I need?",
    "What is the threshold?",
]


# ~1,560 tokens with Gemma 3's tokenizer: above the acceptance's 1,500 with the least prefill to pay.
PROMPT_WORDS = 1150


def system_prompt(n: int, words: int = PROMPT_WORDS) -> str:
    """A long, distinct instruction document per topic (seeded: the same text every run)."""
    rng = random.Random(n)
    lines = [f"You are the assistant for {_TOPICS[n]} at site {n}. Follow these numbered rules exactly."]
    rule = 1
    while sum(len(line.split()) for line in lines) < words:
        body = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(12, 24)))
        lines.append(f"Rule {n}.{rule}: {body}.")
        rule += 1
    return "\n".join(lines)
