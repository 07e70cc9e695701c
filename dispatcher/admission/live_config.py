"""The configuration a process admits requests with, swapped whole when a new revision is applied.

Everything derived from one revision (catalog, RBAC, routing rules) is built before the swap and
published as one immutable `Revision`; admission takes `live.current` once per request, so a request
never sees half of one revision and half of another.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.admission.catalog import Catalog
from dispatcher.admission.rbac import Authorizer
from dispatcher.admission.routing import ContentRouter
from dispatcher.telemetry.labels import MetricLabels
from schemas.config import ModelbusConfig


@dataclass(frozen=True, slots=True)
class Revision:
    config: ModelbusConfig
    number: int
    catalog: Catalog
    authorizer: Authorizer
    router: ContentRouter
    labels: MetricLabels

    @classmethod
    def of(cls, config: ModelbusConfig, number: int) -> Revision:
        return cls(
            config,
            number,
            Catalog(config),
            Authorizer(config),
            ContentRouter(config),
            MetricLabels.of(config),
        )


class LiveConfig:
    def __init__(self, config: ModelbusConfig, revision: int = 0) -> None:
        self.current = Revision.of(config, revision)

    def swap(self, config: ModelbusConfig, revision: int) -> None:
        self.current = Revision.of(config, revision)

    # Shorthands for code that reads one thing once.
    @property
    def config(self) -> ModelbusConfig:
        return self.current.config

    @property
    def revision(self) -> int:
        return self.current.number

    @property
    def catalog(self) -> Catalog:
        return self.current.catalog

    @property
    def authorizer(self) -> Authorizer:
        return self.current.authorizer
