"""Where a running `modelbus up` can be found from another shell.

`up` picks a free port for its embedded NATS when 4222 is taken (on many machines a system
nats-server holds it), so `modelbus top` started in a new terminal would otherwise connect to
that other broker and show an empty table. `up` therefore leaves a small record in the user's
state directory while it runs; operator commands adopt it when no `MODELBUS_*` variable says
otherwise. The record holds addresses and the audit *verify* key only, never a secret.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path

# The variables a record may supply, by its field names.
_VARIABLES = {
    "nats_url": "MODELBUS_NATS_URL",
    "database_url": "MODELBUS_DATABASE_URL",
    "audit_verify_key": "MODELBUS_AUDIT_VERIFY_KEY",
}


def record_path(environ: MutableMapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelbus" / "up.json"


def publish(base_url: str, nats_url: str, database_url: str, audit_verify_key: str) -> Path:
    """Write the record of this process's stack (atomically, readable by this user only)."""
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "pid": os.getpid(),
        "base_url": base_url,
        "nats_url": nats_url,
        "database_url": database_url,
        "audit_verify_key": audit_verify_key,
    }
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    partial.replace(path)
    return path


def withdraw() -> None:
    """Remove the record if it is this process's (a later `up` may have replaced it)."""
    record = _read(record_path())
    if record is not None and record.get("pid") == os.getpid():
        record_path().unlink(missing_ok=True)


def running() -> dict[str, object] | None:
    """The record of a `modelbus up` that is still alive, or None."""
    record = _read(record_path())
    if record is None or not isinstance(record.get("pid"), int):
        return None
    try:
        os.kill(int(str(record["pid"])), 0)
    except ProcessLookupError:
        return None  # a stack that was killed without cleaning up
    except PermissionError:
        pass  # alive, but another user's: its addresses are still the ones to use
    return record


def adopt(environ: MutableMapping[str, str]) -> str | None:
    """Fill in the running stack's addresses unless the caller chose a broker; returns its base URL.

    All or nothing: a caller who set `MODELBUS_NATS_URL` means another deployment, so nothing of
    the record applies to them."""
    if "MODELBUS_NATS_URL" in environ:
        return None
    record = running()
    if record is None:
        return None
    for field, variable in _VARIABLES.items():
        value = record.get(field)
        if isinstance(value, str) and value and variable not in environ:
            environ[variable] = value
    return str(record.get("base_url", ""))


def _read(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
