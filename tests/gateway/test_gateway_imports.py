"""The gateway and watcher stay light: importing them (and the client) loads neither ray, vllm nor torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HEAVY = ("ray", "vllm", "torch")


@pytest.mark.parametrize(
    "module", ["gateway.app", "gateway", "dropbatch.client", "openai_batch_client", "watcher.service", "watcher.admission"]
)
def test_import_loads_no_engine_libraries(module: str) -> None:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "from gateway.app import create_app\n"
        "from dropbatch.settings import Settings\n"
        "create_app(Settings())\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_openapi_document_names_every_route() -> None:
    from dropbatch.settings import Settings
    from gateway.app import create_app
    from gateway.openapi import document

    app = create_app(Settings())
    paths = document()["paths"]
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {model:path}: a converter is routing, not API
        for method in route.methods - {"HEAD"}:
            assert method.lower() in paths[path], f"{method} {route.path} is not in /openapi.json"
