"""The ops page in headless Chromium: it authenticates with the admin key and draws non-empty charts.

The screenshot is kept in the test's output directory (pytest's tmp_path) for a human to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, with_consumers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1200,900",
    # Let the page's JavaScript run for a while (timers, fetches) before the DOM is read.
    "--virtual-time-budget=9000",
]


def _chromium(url: str, *extra: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ops_page_renders_live_charts(cluster: Cluster, tmp_path: Path) -> None:
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=SimulatorBackend(ttft_ms=2))]))
    with cluster.together():
        base = cluster.ingress(path)
        cluster.worker("m", path, "w1")
    root = base.removesuffix("/v1")
    for _ in range(20):  # traffic for the charts
        httpx.post(
            f"{base}/chat/completions",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            json={"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        ).raise_for_status()
    # The data behind the page is admin-only.
    assert (
        httpx.get(f"{root}/admin/ops/data", headers={"Authorization": f"Bearer {TEST_KEY}"}).status_code
        == 403
    )
    # No inline script anywhere (the script is a file of its own), and the page is never framed.
    page = httpx.get(f"{root}/ops", timeout=10)
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == [] and "<style" not in page.text
    script = httpx.get(f"{root}/ops/ops.js", timeout=10)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    url = f"{root}/ops#key={ADMIN_KEY}"
    dom = _chromium(url, "--dump-dom", tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    status = re.search(r'<div id="status">([^<]*)</div>', html)
    assert status is not None and status.group(1).startswith("updated"), status
    assert '<section class="model">' in html and ">m <small>default</small>" in html
    # Each chart is an SVG polyline with points; after several polls there are several.
    charts = [int(n) for n in re.findall(r'data-points="(\d+)"', html)]
    assert len(charts) == 4 and min(charts) >= 2, charts
    shot = tmp_path / "ops-page.png"
    taken = _chromium(url, f"--screenshot={shot}", tmp_path=tmp_path)
    assert taken.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    print(f"ops page screenshot: {shot}")
