"""A production worker loads only the backend it is configured with."""

from __future__ import annotations

import subprocess
import sys


def test_a_worker_in_front_of_a_real_backend_never_imports_the_simulator() -> None:
    probe = (
        "import sys\n"
        "from schemas.config import OpenAIBackend\n"
        "from workers.backends import build_backend\n"
        "import workers.worker_service\n"
        "build_backend(OpenAIBackend(type='openai', base_url='http://127.0.0.1:9/v1'), 'm', 4)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulator' or m.endswith('.simulator')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
