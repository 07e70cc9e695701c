"""German, French and English prompts reach the models their rules name, through the gateway."""

from __future__ import annotations

import openai

from schemas.config import ModelbusConfig, RouteRule, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, with_consumers
from tests.unit.dispatcher.admission.test_content_routing import SENTENCES

FAST = SimulatorBackend(ttft_ms=1, tokens_per_s=5000)


def test_prompts_route_by_language(cluster: Cluster) -> None:
    base = with_consumers([])
    config = ModelbusConfig.model_validate(
        {
            "models": [
                {"name": n, "backend": FAST.model_dump()}
                for n in ("assistant", "assistant-de", "assistant-fr")
            ],
            "consumers": [c.model_dump() for c in base.consumers],
            "routes": [
                RouteRule.model_validate(
                    {
                        "name": "german",
                        "match": {"model": "assistant", "languages": ["de"]},
                        "target": "assistant-de",
                    }
                ).model_dump(),
                RouteRule.model_validate(
                    {
                        "name": "french",
                        "match": {"model": "assistant", "languages": ["fr"]},
                        "target": "assistant-fr",
                    }
                ).model_dump(),
            ],
        }
    )
    path = cluster.write_config(config)
    with cluster.together():
        gateway = cluster.ingress(path)
        for name in ("assistant", "assistant-de", "assistant-fr"):
            cluster.worker(name, path, f"w-{name}")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    expected = {"de": ("assistant-de", "german"), "fr": ("assistant-fr", "french"), "en": ("assistant", None)}
    for language, (model, rule) in expected.items():
        raw = client.chat.completions.with_raw_response.create(
            model="assistant", messages=[{"role": "user", "content": SENTENCES[language]}], max_tokens=2
        )
        assert raw.headers["x-modelbus-model"] == model
        assert raw.headers["x-modelbus-worker"] == f"w-{model}"
        assert raw.headers.get("x-modelbus-route") == rule
        assert raw.parse().model == model
