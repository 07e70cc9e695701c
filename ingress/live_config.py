"""The configuration an ingress serves with, swapped whole when a new revision is applied.

Requests read `live.catalog`, `live.authorizer` and friends once each; a swap replaces them after the
new ones are fully built, so a request never sees half of one revision and half of another. The key
ring outlives revisions: keys issued at run time arrive on their own watch.
"""

from __future__ import annotations

from fastapi import Request

from ingress.catalog import Catalog
from ingress.content_routing import ContentRouter
from ingress.keys import KeyRing
from ingress.rbac import Authorizer
from schemas.config import ModelbusConfig


class LiveConfig:
    def __init__(self, config: ModelbusConfig, revision: int = 0) -> None:
        self.catalog = Catalog(config)
        self.keys = KeyRing(config)
        self.authorizer = Authorizer(config)
        self.router = ContentRouter(config)
        self.config = config
        self.revision = revision

    def swap(self, config: ModelbusConfig, revision: int) -> None:
        catalog, authorizer, router = Catalog(config), Authorizer(config), ContentRouter(config)
        self.keys.swap_config(config)
        self.catalog, self.authorizer, self.router = catalog, authorizer, router
        self.config, self.revision = config, revision


def live_config(request: Request) -> LiveConfig:
    live: LiveConfig = request.app.state.live
    return live
