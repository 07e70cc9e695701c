"""Peer gateways for side-by-side runs: LiteLLM's proxy and Portkey's open-source gateway.

Each is installed on first use under ~/.cache/modelbus-bench (MODELBUS_BENCH_CACHE), never in the
repository: LiteLLM in a virtual environment of its own (its pins would fight the gateway's), Portkey
with npm. Both are pinned to the versions measured in docs/benchmarks.md. How they run offline on
this machine is in ../shared/README.md: LiteLLM needs LITELLM_LOCAL_MODEL_COST_MAP (it fetches a price
list otherwise); Portkey needs @hono/node-server 1.13.5 (newer ones fail streams and embeddings with
`TypeError: immutable`, Portkey-AI/gateway#1389) and has no host option, so a preload binds it to
loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("MODELBUS_BENCH_CACHE", "~/.cache/modelbus-bench")).expanduser()
LITELLM_VERSION = "1.108.7"  # the version of issue 15's figures (1.107.0 was a compromised release)
PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER = "1.13.5"
LITELLM_WORKERS = 2  # one per core here
# LiteLLM refuses to start without a strong master key (since 1.108); clients present it as their key.
LITELLM_MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 4

# Fills in the host of every TCP listen() that names none, so Portkey listens on loopback only.
_LOOPBACK_PRELOAD = """\
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number") {
    if (args[1] === undefined) args[1] = "127.0.0.1";
    else if (typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  } else if (args[0] && typeof args[0] === "object" && args[0].port !== undefined) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
"""


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]


def _run(argv: list[str], what: str) -> None:
    print(f"installing {what} (once) ...", file=sys.stderr, flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"installing {what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def install_litellm() -> Path:
    """The `litellm` executable of a venv under the cache, made and filled when missing."""
    venv = CACHE / "litellm-venv"
    executable = venv / "bin" / "litellm"
    marker = venv / f".installed-{LITELLM_VERSION}"
    if not marker.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        if not (venv / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", str(venv)], "a venv for LiteLLM")
        pip = [str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"]
        _run(pip, f"litellm[proxy]=={LITELLM_VERSION}")
        marker.touch()
    return executable


def install_portkey() -> Path:
    """The directory holding node_modules/@portkey-ai/gateway, installed when missing."""
    home = CACHE / "portkey"
    package = {
        "name": "modelbus-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER},
    }
    manifest = home / "package.json"
    if (
        not (home / "node_modules" / "@portkey-ai" / "gateway").exists()
        or json.loads(manifest.read_text()) != package
    ):
        home.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(package, indent=2) + "\n")
        _run(["npm", "install", "--prefix", str(home), "--no-audit", "--no-fund"], "@portkey-ai/gateway")
    (home / "loopback.mjs").write_text(_LOOPBACK_PRELOAD)
    return home


def litellm_command(port: int, backend_port: int, model: str, workdir: Path) -> Command:
    """LiteLLM's proxy with `model` routed to the backend as an OpenAI-compatible model; no database,
    a master key (the only client key it checks without one), default logging."""
    config = workdir / "litellm.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {
                            "model": "openai/simulated",
                            "api_base": f"http://127.0.0.1:{backend_port}/v1",
                            "api_key": "unused",
                        },
                    }
                ]
            }
        )
    )
    argv = [str(install_litellm()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    # uvicorn gives a new worker 5 s to start by default; LiteLLM's import alone takes longer on two
    # shared cores, and the supervisor then kills and respawns its workers for ever.
    argv += ["--num_workers", str(LITELLM_WORKERS), "--timeout_worker_healthcheck", "120"]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY}
    return Command(argv, env)


def portkey_command(port: int) -> Command:
    home = install_portkey()
    server = home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    argv = ["node", "--import", (home / "loopback.mjs").as_uri(), str(server), f"--port={port}", "--headless"]
    return Command(argv, {**os.environ, "NODE_ENV": "production"})


def portkey_headers(backend_port: int) -> dict[str, str]:
    """Portkey has no server-side routing: each request names its upstream."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://127.0.0.1:{backend_port}/v1",
        "Authorization": "Bearer unused",
    }
