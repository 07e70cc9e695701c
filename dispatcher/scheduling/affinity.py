"""Prefix-cache affinity: which bucket a request's prompt head falls in, and which worker is its home.

A backend keeps the KV cache of prompts it has just served (vLLM and SGLang prefix caching,
llama.cpp's slots), so a request whose long head (system prompt, instructions, earlier turns) it
has seen skips most of the prefill. For a model with `affinity`, the ingress hashes the first
`window_chars` characters of the prompt head into one of `buckets` fixed buckets; each bucket is a
subject with its own durable consumer on the work-queue stream. Every worker computes the home
worker of each bucket by rendezvous hashing over the live workers of its model version, so a worker
that joins or leaves moves only the buckets it gains or held. Workers pull their home buckets first
and steal any other bucket's work rather than idle (workers/affinity_puller.py).

The bucket of a request is a pure function of its payload and the model's configuration, shared by
every ingress; the home map is a pure function of the live worker ids, shared by every worker.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from nats.aio.client import Client as NATS

from dispatcher.bus.subjects import Subjects
from schemas.config import ModelbusConfig
from schemas.envelope import Endpoint, Lane, RequestEnvelope

log = logging.getLogger(__name__)

# On a request staged for fair share: the bucket the share feeder must release it into.
AFFINITY_HEADER = "Modelbus-Affinity-Bucket"

# Endpoints whose prompt has a head worth caching; embeddings, rerank and the rest stay FIFO.
_PROMPT_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES})


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def prompt_head(endpoint: Endpoint, payload: Mapping[str, Any], window_chars: int) -> str | None:
    """The first `window_chars` characters of what a backend sees first; None: no affinity.

    Chat-like requests: the system prompt (`instructions`/`system` for Responses and Messages) then
    the messages in order, each as `role` and text. The last message is left out when there are
    earlier ones: it is the part that changes from request to request, and a cache can only reuse a
    prefix. Completions: the head of the prompt (a single string; a list of prompts has no one head).
    """
    if endpoint not in _PROMPT_ENDPOINTS:
        return None
    pieces: list[str] = []
    if endpoint is Endpoint.COMPLETIONS:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str):
            return None
        pieces.append(prompt)
    else:
        for key in ("instructions", "system"):
            if key in payload:
                pieces.append(f"system\x1f{_text(payload[key])}\x1e")
        raw = payload.get("messages", payload.get("input"))
        if isinstance(raw, str):
            raw = [{"role": "user", "content": raw}]
        messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        # Everything before the last message; a lone message with no system prompt is its own head.
        leading = messages[:-1] if len(messages) > 1 or pieces else messages
        for message in leading:
            pieces.append(f"{message.get('role', '')}\x1f{_text(message.get('content'))}\x1e")
    head = "".join(pieces)[:window_chars]
    return head or None


def bucket_of(head: str, buckets: int) -> int:
    """The bucket (0..buckets-1) of a prompt head: stable across processes and releases."""
    digest = hashlib.blake2b(head.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def request_bucket(
    endpoint: Endpoint, lane: Lane, payload: Mapping[str, Any], window_chars: int, buckets: int
) -> int | None:
    """The affinity bucket of a request, or None when it goes to the lane's FIFO subject (batch lane,
    endpoints without a prompt head, an empty head)."""
    if lane is not Lane.INTERACTIVE:
        return None
    head = prompt_head(endpoint, payload, window_chars)
    return None if head is None else bucket_of(head, buckets)


def _score(worker: str, bucket: int) -> int:
    digest = hashlib.blake2b(f"{worker}\x00{bucket:d}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def home_worker(bucket: int, workers: Iterable[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: the live worker with the highest score for the
    bucket. Removing a worker changes the owner only of the buckets it owned."""
    return max(workers, key=lambda w: (_score(w, bucket), w), default=None)


def assign_homes(
    workers: Iterable[str],
    buckets: int,
    active: Collection[int] = (),
    held: Mapping[str, Collection[int]] | None = None,
) -> dict[int, str]:
    """The home worker of every bucket: rendezvous hashing, with the *active* buckets (those that
    carried work lately, as the workers report in the registry) spread with a bounded load.

    Plain rendezvous balances buckets only on average: the 8 hot prompts of a model can hash 6 to
    one worker and 2 to the other, which then serves the first's prompts cold when it steals. So no
    worker is home to more than ceil(active / workers) active buckets (consistent hashing with
    bounded loads, Mirrokni et al. 2018). Sticky: an active bucket first stays with the live worker
    that reports it `held` (its home buckets that carried work lately, longest held first), while
    it has room — a new bucket turning active, or a worker leaving, must not reshuffle the others,
    whose prompts sit in their workers' caches; the rest go, in bucket order, to the best-scoring
    worker with room. An idle bucket keeps
    its plain rendezvous home. Every worker computes the same map from the same registry.
    """
    live = sorted(set(workers))
    if not live:
        return {}
    hot = sorted({k for k in active if 0 <= k < buckets})
    cap = -(-len(hot) // len(live))  # ceil
    count = dict.fromkeys(live, 0)
    homes: dict[int, str] = {}

    def ranked(k: int, among: Iterable[str]) -> list[str]:
        return sorted(among, key=lambda w: (_score(w, k), w), reverse=True)

    # Claims in order of seniority: every worker's longest-held bucket first, then the next...; a
    # worker over the cap (it inherited a leaver's buckets) gives up the ones it gained last.
    claims = [list(held.get(w, ())) for w in live] if held else []
    for rank in range(max((len(c) for c in claims), default=0)):
        for w, claimed in zip(live, claims, strict=True):
            k = claimed[rank] if rank < len(claimed) else -1
            if k in hot and k not in homes and count[w] < cap:
                homes[k] = w
                count[w] += 1
    for k in hot:
        if k not in homes:
            home = next(w for w in ranked(k, live) if count[w] < cap)
            homes[k] = home
            count[home] += 1
    for k in range(buckets):
        if k not in homes:
            homes[k] = ranked(k, live)[0]
    return homes


def home_buckets(
    me: str,
    workers: Iterable[str],
    buckets: int,
    active: Collection[int] = (),
    held: Mapping[str, Collection[int]] | None = None,
) -> frozenset[int]:
    """The buckets whose home is `me` among `workers` (`me` counts as live whether listed or not)."""
    homes = assign_homes({*workers, me}, buckets, active, held)
    return frozenset(k for k, w in homes.items() if w == me)


def envelope_bucket(config: ModelbusConfig, envelope: RequestEnvelope) -> int | None:
    """The affinity bucket of a request to publish, under the configuration in force; None: FIFO."""
    model = config.model(envelope.target)
    if model is None or model.affinity is None:
        return None
    affinity = model.affinity
    return request_bucket(
        envelope.endpoint, envelope.lane, envelope.payload, affinity.window_chars, affinity.buckets
    )


async def ring(nc: NATS, subjects: Subjects, model: str, version: str, bucket: int) -> None:
    """Tell the model's idle workers that a bucket has work (core NATS, best effort: workers also
    look at every bucket every `rescan` interval, so a lost bell delays, never strands, a request)."""
    try:
        await nc.publish(subjects.affinity_bell(model, version, bucket), b"")
    except Exception as exc:  # noqa: BLE001 - see the docstring: the rescan covers a lost bell
        log.debug("affinity bell not rung: %s", exc)
