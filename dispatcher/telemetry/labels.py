"""The values metric labels may take: names from the configuration, everything else one fixed `unknown`.

Whatever a client sends (a model name with a NUL byte, ten thousand random names, an OIDC subject's
consumer that the configuration does not list) must not become a label: each new value is a new
series kept for the life of the process, so the scrape would grow without bound and carry client
text to whoever reads it. Every `.labels(...)` call with a model, version or consumer goes through a
`MetricLabels` built from the revision in force; fixed vocabularies (statuses, phases, detectors)
still pass through `sanitize`, so no label value holds a control character or runs long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.config import DEFAULT_VERSION, ModelbusConfig

UNKNOWN = "unknown"
MAX_LENGTH = 64
# Prometheus escapes any text in a label value, but scrapers, dashboards and log pipelines do not all
# do it right; a conservative alphabet keeps a value printable everywhere.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@+-]")


def sanitize(value: object) -> str:
    """A label value: printable ASCII from a safe alphabet (others become `_`), at most MAX_LENGTH."""
    text = _UNSAFE.sub("_", str(value))[:MAX_LENGTH]
    return text or UNKNOWN


@dataclass(frozen=True, slots=True)
class MetricLabels:
    """Label values allowed by one configuration revision."""

    models: frozenset[str]  # models and pools: what a client may ask for by name
    versions: frozenset[str]
    consumers: frozenset[str]

    @classmethod
    def of(cls, config: ModelbusConfig) -> MetricLabels:
        versions = {DEFAULT_VERSION, *(v.name for m in config.models for v in m.versions)}
        return cls(
            frozenset(m.name for m in config.models) | frozenset(p.name for p in config.pools),
            frozenset(versions),
            frozenset(c.name for c in config.consumers),
        )

    def model(self, name: str | None) -> str:
        return sanitize(name) if name in self.models else UNKNOWN

    def version(self, name: str | None) -> str:
        return sanitize(name) if name in self.versions else UNKNOWN

    def consumer(self, name: str | None) -> str:
        return sanitize(name) if name in self.consumers else UNKNOWN
