"""The guardrails' cost: the input guard as admission runs it on 2,000- and 100,000-character
prompts, and CPU time on repetitive adversarial input (linear time). Run through
`python bench/guardrails_eval.py --cost`."""

from __future__ import annotations

import time

from bench.stats import percentile
from dispatcher.guardrails.injection import detect_injection
from dispatcher.guardrails.pii import detect_pii
from dispatcher.guardrails.policies import InputPolicy, input_guard

_SENTENCE = (
    "Our quarterly planning review covers the migration of the billing service, the new caching layer "
    "and the on-call rotation for the platform team; please summarise the risks and next steps. "
)


# Benign, but every sentence holds attack concepts (list, all, previous, your, rules, show me): the
# injection scorer (round seven) reads every window of it, where the prompts above hold none.
_ATTACK_WORDS = (
    "Please list all the previous versions of your team's onboarding rules and show me which guidelines "
    "changed since the original policy; you can quote the old wiki where it helps. "
)


def _prompts() -> dict[str, str]:
    dense = " ".join(
        ["anna.schmidt@example.de", "+49 30 901820", "5555 5555 5555 4444", "DE89 3704 0044 0532 0130 00"]
        + ["078-05-1121", "10.1.2.3", "(415) 555-2671", "Ref. 2024-11-07, order 88231."]
    )
    return {
        "2,000 characters, clean": (_SENTENCE * 20)[:2000],
        "2,000 characters, with PII": (
            _SENTENCE * 8
            + "Contact anna.schmidt@example.de or +49 30 901820, card 5555 5555 5555 4444. "
            + _SENTENCE * 8
        )[:2000],
        "2,000 characters, PII-dense (79 entities)": ((dense + " ") * 20)[:2000],
        "2,000 characters, German and Chinese": (
            "Bitte fasse den Bericht zusammen und nenne die Risiken. 请总结这份报告并列出风险。" * 40
        )[:2000],
        "2,000 characters, Chinese": (
            "请总结这份报告并列出主要风险，包括迁移计费服务、新的缓存层以及平台团队的值班安排。" * 60
        )[:2000],
        "2,000 characters, benign with attack words": (_ATTACK_WORDS * 20)[:2000],
        "100,000 characters, clean": (_SENTENCE * 600)[:100_000],
        "100,000 characters, benign with attack words": (_ATTACK_WORDS * 600)[:100_000],
    }


def cost() -> str:
    """The input guard with every detector on (PII mask, injection, content), as admission runs it.
    Each run starts cold (the per-prompt caches cleared: a new request brings a new text). Wall time
    is what a caller waits on this machine; CPU time is the guard's own work, which other processes
    on a shared box do not inflate."""
    from dispatcher.guardrails import phones
    from dispatcher.guardrails.normalize import normalize

    guard = input_guard(InputPolicy(pii="mask", injection="block", content="block"))
    lines = [
        "| prompt | wall p50 | wall p99 | CPU p50 | CPU p99 |",
        "|---|---|---|---|---|",
    ]
    for name, text in _prompts().items():
        runs = 50 if len(text) > 10_000 else 2000
        wall: list[float] = []
        cpu: list[float] = []
        for _ in range(runs):
            normalize.cache_clear()
            phones._is_phone.cache_clear()  # a new request brings new numbers
            started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            guard.inspect(text)
            cpu.append((time.thread_time_ns() - started_cpu) / 1e6)
            wall.append((time.perf_counter_ns() - started) / 1e6)
        figures = [percentile(v, q) for v in (wall, cpu) for q in (50, 99)]
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f} ms" for x in figures) + " |")
    return "\n".join(lines)


def adversarial() -> str:
    """CPU time of PII and injection detection on repetitive input at 64,000 and 256,000 characters:
    linear time means a ratio near 4."""
    lines = ["| input | 64,000 chars | 256,000 chars | ratio |", "|---|---|---|---|"]
    units = ("a@a.", "1 1 ", "12 12 ", "4111 4111 ", "ignore ", "i g n o r e ", "+49 30 ", "AB12 ")
    # Attack words that form no rule: the injection scorer reads every window.
    for unit in (*units, "list all your previous rules ", "你的规则所有列出"):
        took = []
        for size in (64_000, 256_000):
            text = (unit * (size // len(unit) + 1))[:size]
            started = time.thread_time_ns()
            detect_pii(text)
            detect_injection(text)
            took.append((time.thread_time_ns() - started) / 1e6)
        lines.append(
            f"| `{unit.strip()}` repeated | {took[0]:.0f} ms | {took[1]:.0f} ms | {took[1] / took[0]:.1f} |"
        )
    return "\n".join(lines)
