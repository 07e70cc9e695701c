"""The applied configuration, kept in a NATS KV bucket with history, watched by every process.

The bucket holds the YAML text as applied (comments included) under one key; each apply is a new
revision. Processes load the current revision at start-up (the config file is only the bootstrap
when nothing has been applied yet) and swap to each new one as it arrives; a revision that does not
validate is refused and the running configuration stays.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.kv_watch import watch_bucket
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket
from dispatcher.config.config_file import parse_config
from dispatcher.errors import ConfigError
from schemas.config import ModelbusConfig

log = logging.getLogger(__name__)

_KEY = "current"
_HISTORY = 64


@dataclass(frozen=True)
class Revision:
    number: int
    text: str
    created: datetime | None


OnChange = Callable[[ModelbusConfig, int], Awaitable[None] | None]


class ConfigStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self.reloads = 0
        self.rejected = 0

    @classmethod
    async def open(cls, js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> ConfigStore:
        description = "Modelbus configuration, one revision per apply"
        kv = await ensure_bucket(js, settings, subjects.config_bucket, description, history=_HISTORY)
        return cls(js, kv, subjects.config_bucket)

    async def current(self) -> Revision | None:
        try:
            entry = await self._kv.get(_KEY)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return Revision(int(entry.revision or 0), entry.value.decode(), getattr(entry, "created", None))

    async def apply(self, text: str, source: str = "<config>", after: int | None = None) -> int:
        """Validate and store a new revision; raises ConfigError (nothing stored) if invalid, or if
        `after` is given and another revision was applied since that one (0: none at all)."""
        parse_config(text, source)
        if after is None:
            return int(await self._kv.put(_KEY, text.encode()))
        try:
            if after == 0:
                return int(await self._kv.create(_KEY, text.encode()))
            return int(await self._kv.update(_KEY, text.encode(), last=after))
        except KeyWrongLastSequenceError:
            raise ConfigError(
                f"{source}: another revision was applied meanwhile; check and apply again"
            ) from None

    async def apply_first(self, text: str, source: str = "<config>") -> int | None:
        """Store `text` as the first revision, or do nothing (None) if one is applied already;
        atomic, so of two starts racing exactly one stores its configuration."""
        parse_config(text, source)
        try:
            return int(await self._kv.create(_KEY, text.encode()))
        except KeyWrongLastSequenceError:
            return None

    async def history(self) -> list[Revision]:
        try:
            entries = await self._kv.history(_KEY)
        except (KeyNotFoundError, NoKeysError):  # nothing applied yet
            return []
        return [
            Revision(int(e.revision or 0), (e.value or b"").decode(), getattr(e, "created", None))
            for e in entries
        ]

    async def follow(self, on_change: OnChange) -> None:
        """Call `on_change` with the current revision, then with every valid new one, until cancelled.

        Meant to run under a Supervisor: a lost watch raises, and the next run starts from the current
        revision again (applying a revision twice is harmless)."""
        last = -1
        async for entry in watch_bucket(self._js, self._kv, self._bucket, _KEY):
            if entry is None or entry.value is None or entry.operation is not None:
                continue  # the "no more history" marker, or a delete
            revision = int(entry.revision or 0)
            if revision == last:
                continue
            last = revision
            try:
                config = parse_config(entry.value.decode(), f"config revision {revision}")
            except ConfigError as exc:
                self.rejected += 1
                log.error("config revision %d refused, keeping the running one: %s", revision, exc)
                continue
            result = on_change(config, revision)
            if result is not None:
                await result
            self.reloads += 1
            log.info("config revision %d applied", revision)


async def load_initial(store: ConfigStore, fallback: ModelbusConfig) -> tuple[ModelbusConfig, int]:
    """The applied configuration if there is one, else the bootstrap file's (revision 0)."""
    revision = await store.current()
    if revision is None:
        return fallback, 0
    try:
        return parse_config(revision.text, f"config revision {revision.number}"), revision.number
    except ConfigError as exc:
        log.error("applied config revision %d is invalid, starting from the file: %s", revision.number, exc)
        return fallback, 0
