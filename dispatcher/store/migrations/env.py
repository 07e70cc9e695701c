"""Alembic environment: runs migrations over an async engine (the URL comes from the caller)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from dispatcher.store.database import create_engine


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "", pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


# From async application code the caller passes its own connection (see migrate.upgrade_async):
# a second event loop in a thread would disturb the caller's signal handling.
_given = context.config.attributes.get("connection")
if _given is not None:
    _run(_given)
else:
    asyncio.run(_online())
