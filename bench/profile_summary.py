"""Summaries of py-spy's raw (collapsed-stack) profiles: where a process spends its busy time.

    python -m bench.profile_summary ingress.txt [--top 25]

Each line of the input is `frame;frame;...;leaf count`, a frame being `function (file:line)`.
Self time goes to the leaf; inclusive time to every distinct function on the stack. By area, time
in asyncio's own code (a socket write in `StreamWriter.writelines`, a `Queue.get`) is charged to the
nearest caller outside asyncio, so that nats-py's socket writes count as nats-py; only what has no
such caller (the event loop itself, in uvloop's C code) stays with the event loop.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
# Leaf files grouped into the layers a request crosses; the first matching prefix wins.
_EVENT_LOOP = "asyncio / uvloop (event loop)"
_LOOP_DRIVERS = ("asyncio/runners.py", "asyncio/base_events.py", "uvloop/__init__.py")
_AREAS = (
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools/", "uvicorn (HTTP server)"),
    ("starlette/", "starlette/fastapi (routing, middleware)"),
    ("fastapi/", "starlette/fastapi (routing, middleware)"),
    ("pydantic", "pydantic (validation, serialization)"),
    ("nats/", "nats-py (bus client)"),
    ("aiohttp/", "aiohttp (backend client)"),
    ("yarl/", "aiohttp (backend client)"),
    ("multidict/", "aiohttp (backend client)"),
    ("tenacity/", "tenacity (publish retry)"),
    ("asyncio/", _EVENT_LOOP),
    ("uvloop/", _EVENT_LOOP),
    ("ingress/", "modelbus ingress"),
    ("dispatcher/", "modelbus dispatcher (bus protocol)"),
    ("workers/", "modelbus worker"),
    ("schemas/", "modelbus schemas"),
)


@dataclass(frozen=True)
class Profile:
    samples: int
    self_by_function: Counter[str]
    inclusive_by_function: Counter[str]
    self_by_area: Counter[str]


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match["function"], match["file"]


def area_of(path: str) -> str:
    normalized = path.replace("\\", "/")
    for prefix, area in _AREAS:
        if normalized.startswith(prefix) or f"/{prefix}" in normalized:
            return area
    return "other"


def charged_area(files: list[str]) -> str:
    """The area of the innermost frame outside asyncio; `files` run from the root to the leaf.

    Reaching the loop's driver (`Runner.run`, `run_forever`) first means the event loop itself.
    """
    for file in reversed(files):
        if file.endswith(_LOOP_DRIVERS):
            return _EVENT_LOOP
        area = area_of(file)
        if area != _EVENT_LOOP:
            return area
    return _EVENT_LOOP


def load(path: Path) -> Profile:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_parse_frame(frame) for frame in stack.split(";")]
        names = [f"{function} ({file})" for function, file in frames]
        self_time[names[-1]] += count
        areas[charged_area([file for _, file in frames])] += count
        for name in set(names):  # recursion counts once
            inclusive[name] += count
    return Profile(total, self_time, inclusive, areas)


def render(profile: Profile, top: int) -> str:
    def share(count: int) -> str:
        return f"{100 * count / max(profile.samples, 1):5.1f} %"

    lines = [
        f"{profile.samples} busy samples",
        "",
        "self time by area (asyncio's code charged to its caller):",
    ]
    lines += [f"  {share(c)}  {area}" for area, c in profile.self_by_area.most_common()]
    lines += ["", f"top {top} functions by self time:"]
    lines += [f"  {share(c)}  {name}" for name, c in profile.self_by_function.most_common(top)]
    lines += ["", f"top {top} functions by inclusive time:"]
    lines += [f"  {share(c)}  {name}" for name, c in profile.inclusive_by_function.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(render(load(args.profile), args.top))


if __name__ == "__main__":
    main()
