"""Database URLs and engines: users give a standard `postgresql://` URL; we drive it with asyncpg."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def async_url(url: str) -> str:
    """`postgresql://…` (libpq style, also with `?host=/socket/dir`) → the asyncpg dialect URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("only PostgreSQL is supported (postgresql://...)")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    # pool_pre_ping: after a database restart, stale connections are replaced instead of failing.
    return create_async_engine(async_url(url), pool_size=pool_size, pool_pre_ping=True)
