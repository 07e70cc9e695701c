"""The configuration an ingress serves with, swapped whole when a new revision is applied.

Requests read `live.catalog` and `live.keys` once each; a swap replaces both references after the
new ones are fully built, so a request never sees half of one revision and half of another.
"""

from __future__ import annotations

from fastapi import Request

from ingress.auth import KeyStore
from ingress.catalog import Catalog
from ingress.content_routing import ContentRouter
from schemas.config import ModelbusConfig


class LiveConfig:
    def __init__(self, config: ModelbusConfig, revision: int = 0) -> None:
        self.catalog = Catalog(config)
        self.keys = KeyStore(config)
        self.router = ContentRouter(config)
        self.config = config
        self.revision = revision

    def swap(self, config: ModelbusConfig, revision: int) -> None:
        catalog, keys, router = Catalog(config), KeyStore(config), ContentRouter(config)
        self.catalog, self.keys, self.router = catalog, keys, router
        self.config, self.revision = config, revision


def live_config(request: Request) -> LiveConfig:
    live: LiveConfig = request.app.state.live
    return live
