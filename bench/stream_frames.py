"""How many NATS messages a stream costs, by kind: reply frames by their chunk count, and the rest.

    python -m bench.stream_frames --target main=/work/main --target new=. --seconds 6

One simulator (as bench.deployed runs it); for each checkout in turn, one deployed stack (its own
bench/stack.py `start_deployed`) under stream c=16 (16 chunks) while a plain NATS client
subscribed to `>` on the stack's embedded server counts what passes. Counts are per stream, the
number of streams taken as half the `<ns>.req` messages seen (each request is published once and
delivered once). A quick stream ideally costs one reply message: a final frame with 16 chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parents[1]

_COUNT = """
import asyncio, collections, json, sys, tempfile, time
from dataclasses import asdict
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench import stack
from bench.deployed import HOST, JSON_HEADERS
from bench.loadgen import LoadRun, Plan
from bench.stack import CHAT, CHAT_PATH, Processes
with tempfile.TemporaryDirectory(prefix="modelbus-frames-") as tmp:
    procs = Processes(Path(tmp))
    deployed = stack.start_deployed(Path(tmp), stack.gateway_config(int(sys.argv[2]), stack.WORKER_SLOTS))
    try:
        seconds = float(sys.argv[3])
        body = json.dumps({**CHAT, "stream": True})
        run = LoadRun("s", deployed.port, "POST", CHAT_PATH, body, 16, 0, 320, seconds=seconds + 4)
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {stack.API_KEY}"}
        load = procs.start_piped("loadgen", [sys.executable, "-m", "bench.loadgen"], cwd=Path(sys.argv[1]))
        load.stdin.write(json.dumps(asdict(Plan(HOST, headers, {}, [run]))).encode())
        load.stdin.close()
        print(json.dumps({"nats": deployed.stack.nats.url}), flush=True)
        sys.stdin.readline()  # counted
        load.stdout.read()
        load.wait()
        procs.forget("loadgen")
    finally:
        deployed.stop()
        procs.stop_all()
"""


def _key(msg: Msg) -> str:
    parts = msg.subject.split(".")
    if parts[0].startswith("_INBOX"):
        return "_INBOX"
    if parts[0] == "$JS":
        return ".".join(parts[:3])
    if len(parts) > 1 and parts[1] == "reply":
        if parts[-1] == "_pulse":
            return "reply pulse"
        meta = json.loads(msg.data.partition(b"\n")[0])
        return f"reply {meta.get('kind')} frame, {meta.get('count') or 0} chunks"
    return ".".join(parts[:2])


async def _count(url: str, seconds: float) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    nc = await nats.connect(url)

    async def seen(msg: Msg) -> None:
        counts[_key(msg)] += 1

    await asyncio.sleep(2)  # past the load generator's warm-up
    sub = await nc.subscribe(">", cb=seen)
    await asyncio.sleep(seconds)
    await sub.unsubscribe()
    await nc.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True, help="name=checkout path")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench import stack
    from bench.stack import Processes
    from modelbus.embedded_nats import free_port

    with tempfile.TemporaryDirectory(prefix="modelbus-frames-") as tmp:
        procs = Processes(Path(tmp))
        try:
            port = free_port()
            procs.spawn("simulator", stack._cli("simulator", "--port", str(port), *stack.SIMULATOR_ARGS))
            for name, root in (t.split("=", 1) for t in args.target):
                child = subprocess.Popen(
                    [sys.executable, "-c", _COUNT, str(Path(root).resolve()), str(port), str(args.seconds)],
                    cwd=root,
                    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # its own code
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert child.stdin is not None and child.stdout is not None
                url = json.loads(child.stdout.readline())["nats"]
                counts = asyncio.run(_count(url, args.seconds))
                child.stdin.write("\n")
                child.stdin.close()
                child.wait(timeout=180)
                streams = max(1, sum(v for k, v in counts.items() if k.endswith(".req")) / 2)
                print(f"\n{name}: {streams:,.0f} streams counted; messages per stream")
                for key, value in sorted(counts.items(), key=lambda kv: -kv[1]):
                    if value / streams >= 0.005:
                        print(f"  {value / streams:6.2f}  {key}")
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()
