"""Who a request acts for, once its credential has been checked: the principal admission works on.

The ingress builds an `Identity` from an API key or a JWT; a batch line runs under the identity
recorded when its batch was created (`IdentitySnapshot`), re-derived against the configuration of
the moment it runs, so a role taken away since then applies to lines not yet run.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.batches import IdentitySnapshot
from schemas.config import ConsumerConfig, ModelbusConfig
from schemas.envelope import Lane


@dataclass(frozen=True, slots=True)
class Identity:
    consumer: str
    key_id: str  # which credential: an API key id or `jwt:<subject>`; never secret
    roles: frozenset[str] = frozenset()
    lane: Lane = Lane.INTERACTIVE
    settings: ConsumerConfig | None = None  # limits, guardrails, degradation (None: defaults)
    # Roles the credential itself carried (a JWT's claims), kept apart from the configuration's so a
    # snapshot can be re-derived later without freezing the configuration's roles of today.
    credential_roles: frozenset[str] = frozenset()

    def snapshot(self) -> IdentitySnapshot:
        return IdentitySnapshot(
            consumer=self.consumer,
            key_id=self.key_id,
            credential_roles=sorted(self.credential_roles),
            settings_consumer=self.settings.name if self.settings is not None else None,
        )


def identity_for(
    consumer: str, key_id: str, settings: ConsumerConfig | None, credential_roles: frozenset[str]
) -> Identity:
    """The identity of a caller, with the roles and lane its consumer entry (if any) gives it."""
    if settings is None:
        return Identity(consumer, key_id, credential_roles, credential_roles=credential_roles)
    roles = credential_roles | frozenset(settings.roles)
    if settings.admin:
        roles |= {"admin"}
    return Identity(consumer, key_id, roles, settings.lane, settings, credential_roles)


def from_snapshot(snapshot: IdentitySnapshot, config: ModelbusConfig) -> Identity | None:
    """The recorded identity under `config`; None if its consumer entry has gone since.

    A caller without a consumer entry (a JWT whose issuer maps no default consumer) had none when
    the batch was created either; it keeps only its credential's roles.
    """
    settings = None
    if snapshot.settings_consumer is not None:
        settings = config.consumer(snapshot.settings_consumer)
        if settings is None:
            return None
    elif not snapshot.key_id.startswith("jwt:"):
        return None  # an API key always belongs to a configured consumer
    return identity_for(snapshot.consumer, snapshot.key_id, settings, frozenset(snapshot.credential_roles))
