"""What a detector reports: a kind and where in the text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # a PII kind ("email", "card", ...), "injection", or "content:<category>"
    start: int
    end: int

    @property
    def label(self) -> str:
        """What replaces the entity when masked: `[EMAIL]`, `[CARD]`, `[CONTENT]`."""
        return "[" + self.kind.split(":", 1)[0].upper() + "]"


# Of two findings on the same span, the more specific kind names it (an SSN also looks like a phone).
_PRIORITY = {"secret": 0, "card": 1, "iban": 2, "ssn": 3, "national_id": 4, "email": 5, "ip": 6, "phone": 7}


def non_overlapping(findings: list[Finding]) -> list[Finding]:
    """Earliest first; of overlapping ones, the longest wins, then the most specific."""
    ordered = sorted(findings, key=lambda f: (f.start, -(f.end - f.start), _PRIORITY.get(f.kind, 9)))
    kept: list[Finding] = []
    for finding in ordered:
        if kept and finding.start < kept[-1].end:
            continue
        kept.append(finding)
    return kept


def mask(text: str, findings: list[Finding]) -> str:
    """`text` with every finding replaced by its label."""
    if not findings:
        return text
    out: list[str] = []
    at = 0
    for finding in non_overlapping(findings):
        out.append(text[at : finding.start])
        out.append(finding.label)
        at = finding.end
    out.append(text[at:])
    return "".join(out)
