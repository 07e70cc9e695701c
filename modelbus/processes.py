"""Several copies of one server process: `modelbus ingress --workers N`, `modelbus worker --processes N`.

A Python process uses one core; these flags use more without another deployment unit. The parent
only starts, watches and stops the copies: each is a whole process of its kind, with its own id
(`<id>-<n>`: its own reply inbox, registry entry and audit source), NATS connection and event loop.
Ingress copies share the HTTP port through SO_REUSEPORT (the kernel spreads new connections over
them). A copy that dies is started again after a pause; one that fails within its first seconds
stops them all (a bad port or configuration would fail again). SIGINT and SIGTERM are passed on, and
the parent waits for every copy's own graceful shutdown.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import typer

# A copy that exits this soon after starting is failing to start, not crashing under load.
_START_FAILURE_S = 30.0
_RESTART_PAUSE_S = 1.0
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def listen_reuse_port(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket that other processes may bind too (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def run_copies(argv: Sequence[str], envs: Sequence[Mapping[str, str]]) -> int:
    """Run `modelbus <argv>` once per environment in `envs` until SIGINT/SIGTERM; returns the exit code."""
    command = [sys.executable, "-m", "modelbus", *argv]  # modelbus/__main__.py says why
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children: list[subprocess.Popen[bytes]] = []
    started: list[float] = []
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for env in envs:
        children.append(_spawn(command, env))
        started.append(time.monotonic())
    code = 0
    while not stopping:
        time.sleep(_POLL_S)
        for n, child in enumerate(children):
            returned = child.poll()
            if returned is None or stopping:
                continue
            if time.monotonic() - started[n] < _START_FAILURE_S:
                typer.echo(f"copy {n} exited with {returned} while starting: stopping all", err=True)
                code = returned or 1
                stop(signal.SIGTERM, None)
                break
            typer.echo(f"copy {n} exited with {returned}: starting it again", err=True)
            time.sleep(_RESTART_PAUSE_S)
            children[n] = _spawn(command, envs[n])
            started[n] = time.monotonic()
    for child in children:
        child.wait()
    return code


def _spawn(command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # The parent runs no threads (it only starts and watches), so preexec_fn is safe here.
    return subprocess.Popen(command, env=dict(env), preexec_fn=_die_with_parent)  # noqa: PLW1509


def _die_with_parent() -> None:
    """In the copy before exec: SIGTERM if the parent dies (even by SIGKILL), so no copy is left
    holding the port."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not glibc: the copies outlive a killed parent
